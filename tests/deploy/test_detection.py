"""The exported detection graph against mmdet's ``predict``, at image borders and in batches.

Random-weight models of the shipped configs (atto backbones) see two pictures that the test
pipeline resizes to sizes that are not multiples of 32 (96x144 -> 107x160, 150x100 ->
160x107): padded to 128x160 alone and to 160x160 together, so boxes reach into the padding of
each image. References: mmdet's own ``predict`` on the same weights and the same batches.

- the export module's forward (eager PyTorch) equals mmdet's ``predict(rescale=False)``
  exactly (boxes, scores, labels), one image and the batch of two;
- its outputs, and ONNX Runtime's (``ONNXRuntimeDetector``), made into predictions at the
  original size equal mmdet's ``predict`` (boxes within 1 px, each matched mask's IoU
  >= 0.98);
- the settings the graph computes besides the shipped configs' (class-agnostic regression
  and masks, box-only detectors, NMS options) against mmdet the same way, and the settings it
  does not compute are refused by name before anything is traced.
"""
from __future__ import annotations

import copy
import re
from pathlib import Path

import mmcv
import mmdet
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate

from convnext_dense.apis.inference import inference_pipeline, load_inference_model
from convnext_dense.apis.models import build_model
from convnext_dense.deploy.detection import TwoStageDetectorExport
from convnext_dense.deploy.errors import ExportError
from convnext_dense.deploy.export import export_onnx, graph_output_names
from convnext_dense.deploy.runtime import (
    ONNXRuntimeDetector,
    detections_to_samples,
    load_onnx_model,
)
from tests.conftest import run_tool_main

REPO = Path(__file__).resolve().parents[2]
DET_DEMO = 'configs/demo/mask_rcnn_convnext_demo.py'
CASCADE = 'configs/cascade_mask_rcnn_convnext_t_coco.py'
#: the paper's Cascade Mask R-CNN with an atto backbone and heads of 64 channels (the same
#: modules, heads and post-processing as the config's); 300 proposals, and a low score_thr:
#: 80 classes of a random model score ~1/81
ATTO_CASCADE = {'model.backbone.arch': 'atto', 'model.backbone.init_cfg': None,
                'model.neck.in_channels': [40, 80, 160, 320], 'model.neck.out_channels': 64,
                'model.rpn_head.in_channels': 64, 'model.rpn_head.feat_channels': 64,
                'model.roi_head.bbox_roi_extractor.out_channels': 64,
                'model.roi_head.mask_roi_extractor.out_channels': 64,
                'model.roi_head.mask_head.in_channels': 64,
                'model.roi_head.mask_head.conv_out_channels': 64,
                **{f'model.roi_head.bbox_head.{stage}.{key}': value for stage in range(3)
                   for key, value in [('in_channels', 64), ('conv_out_channels', 64),
                                      ('fc_out_channels', 256)]},
                'model.test_cfg.rcnn.score_thr': 0.01,
                'model.test_cfg.rpn.max_per_img': 300}
#: (height, width) of the two pictures; the (160, 128) keep-ratio test resize makes them
#: 107x160 and 160x107 (scale factors 1.11 and 1.07)
IMAGE_SIZES = [(96, 144), (150, 100)]
TEST_SCALE = (160, 128)
MMDET_CONFIGS = Path(mmdet.__file__).parent / '.mim' / 'configs'


def load_cfg(config: str, options: dict | None = None) -> Config:
    """``config`` with ``options``, its test resize at :data:`TEST_SCALE` (CI time)."""
    cfg = Config.fromfile(str(REPO / config))
    cfg.merge_from_dict(options or {})
    for step in cfg.test_dataloader.dataset.pipeline:
        if step['type'] == 'Resize':
            step['scale'] = TEST_SCALE
    return cfg


def cascade_box_cfg() -> Config:
    """mmdet's own Cascade R-CNN (box only, class-agnostic regression in all three stages)
    with the demo's backbone, classes and data, its heads narrowed to the demo's 64 channels."""
    cfg = load_cfg(DET_DEMO)
    model = Config.fromfile(MMDET_CONFIGS / '_base_/models/cascade-rcnn_r50_fpn.py').model
    model.backbone, model.data_preprocessor = cfg.model.backbone, cfg.model.data_preprocessor
    model.neck.update(in_channels=cfg.model.neck.in_channels, out_channels=64)
    model.rpn_head.update(in_channels=64, feat_channels=64)
    model.roi_head.bbox_roi_extractor.out_channels = 64
    for head in model.roi_head.bbox_head:
        head.update(in_channels=64, fc_out_channels=128, num_classes=5)
    model.test_cfg.rpn.max_per_img = 300
    cfg.model = model
    return cfg


@pytest.fixture(scope='module')
def images(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp('images')
    generator = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate(IMAGE_SIZES):
        image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image[height // 4:height // 2, width // 3:] = (30, 200, 90)  # a shape at the border
        paths.append(folder / f'{index}.png')
        mmcv.imwrite(image, str(paths[-1]))
    return paths


def make_batch(cfg: Config, paths: list[Path]) -> dict:
    """The batch the config's test dataloader would make of ``paths``."""
    pipeline = inference_pipeline(cfg)
    return pseudo_collate([pipeline(dict(img_path=str(p), img_id=i))
                           for i, p in enumerate(paths)])


def batches(images: list[Path]) -> list[list[Path]]:
    return [images[:1], images]  # one image; a batch of two of different sizes


class Detector:
    """A random-weight model of a config, its export module and (optionally) its export."""

    def __init__(self, cfg: Config, folder: Path | None = None, seed: int = 0) -> None:
        self.cfg = cfg
        torch.manual_seed(seed)
        self.model = build_model(cfg).eval()
        with torch.no_grad():  # confident masks: few pixels at 0.5 +- ONNX Runtime's rounding
            for module in self.model.modules():
                if hasattr(module, 'conv_logits'):
                    module.conv_logits.weight.mul_(20)
        self.graph = TwoStageDetectorExport(self.model).eval()
        self.output_names = graph_output_names(cfg, 'detection')
        self.onnx_file = None
        if folder is not None:
            config_file, checkpoint = folder / 'config.py', folder / 'weights.pth'
            cfg.dump(str(config_file))
            torch.save({'state_dict': self.model.state_dict()}, checkpoint)
            # traced at neither of the tested sizes
            self.onnx_file = export_onnx(str(config_file), str(checkpoint), folder / 'onnx',
                                         shape=(96, 128))

    @property
    def mask_threshold(self) -> float:
        return float(self.cfg.model.test_cfg.rcnn.get('mask_thr_binary', 0.5))

    def mmdet(self, data: dict) -> list:
        """mmdet's predictions at the original size (``test_step``: ``predict(rescale=True)``)."""
        with torch.no_grad():
            return [s.pred_instances for s in self.model.test_step(copy.deepcopy(data))]

    def preprocess(self, data: dict) -> tuple[torch.Tensor, torch.Tensor, list]:
        processed = self.model.data_preprocessor(copy.deepcopy(data), False)
        samples = processed['data_samples']
        img_shapes = torch.tensor([list(s.img_shape) for s in samples])
        return processed['inputs'], img_shapes, samples

    def eager(self, data: dict) -> tuple[dict, list]:
        """The export module's outputs on a batch, and the batch's data samples."""
        inputs, img_shapes, samples = self.preprocess(data)
        with torch.no_grad():
            outputs = self.graph(inputs, img_shapes)
        return dict(zip(self.output_names, outputs)), samples

    def predictions(self, outputs: dict, samples: list) -> list:
        """The export module's ``outputs`` as predictions at the original size, as
        ONNXRuntimeDetector makes them."""
        samples = detections_to_samples(outputs, samples, self.mask_threshold)
        return [s.pred_instances for s in samples]

    def onnx_predictions(self, data: dict) -> list:
        runtime = load_inference_model(self.cfg, str(self.onnx_file),  # as tools/infer.py
                                       load_onnx=load_onnx_model)
        assert isinstance(runtime, ONNXRuntimeDetector)
        return [s.pred_instances for s in runtime.test_step(copy.deepcopy(data))]


def assert_graph_equals_mmdet(detector: Detector, data: dict, outputs: dict) -> None:
    """The export module's dets and labels (``outputs`` on ``data``) are mmdet's
    ``predict(rescale=False)``, exactly."""
    inputs, _, samples = detector.preprocess(data)
    with torch.no_grad():
        expected = detector.model.predict(inputs, samples, rescale=False)
    dets, labels = outputs['dets'], outputs['labels']
    for image, sample in enumerate(expected):
        instances = sample.pred_instances
        count = len(instances.scores)
        assert count > 0 and (dets[image, count:, 4] == 0).all()
        assert torch.equal(dets[image, :count, :4], instances.bboxes)
        assert torch.equal(dets[image, :count, 4], instances.scores)
        assert torch.equal(labels[image, :count], instances.labels)


def assert_predictions_match(actual, expected, ori_shape: tuple[int, int],
                             min_matched: float = 1.0) -> None:
    """Each of mmdet's detections has one of ``actual`` with its class and its box within
    1 px, its score within 1e-3 relative, its mask the same but for 2 % of its pixels or 2
    pixels, whichever is more (a random model's masks have pixels at the threshold; a small
    mask with one flipped has an IoU of 0.975) (uint8 masks: within 1);
    at least ``min_matched`` of them (random models score many boxes alike: ONNX Runtime's
    last digits may swap a few in or out of the best ``max_per_img``). Some boxes reach the
    right or bottom border of the image (``ori_shape``)."""
    assert len(expected.scores) > 0
    assert abs(len(actual.scores) - len(expected.scores)) <= (1 - min_matched) * len(
        expected.scores)
    distance = (actual.bboxes[None, :, :] - expected.bboxes[:, None, :]).abs().amax(dim=-1)
    distance[expected.labels[:, None] != actual.labels[None, :]] = float('inf')
    nearest, match = distance.min(dim=1)
    matched = nearest <= 1.0
    assert matched.float().mean().item() >= min_matched, nearest
    torch.testing.assert_close(actual.scores[match[matched]], expected.scores[matched],
                               rtol=1e-3, atol=1e-6)
    pairs = list(zip(matched.nonzero()[:, 0].tolist(), match[matched].tolist()))
    if 'masks' in expected:
        assert actual.masks.shape[1:] == expected.masks.shape[1:] == ori_shape
        assert actual.masks.dtype == expected.masks.dtype
        if expected.masks.dtype == torch.uint8:
            assert all((actual.masks[j].int() - expected.masks[i].int()).abs().max() <= 1
                       for i, j in pairs)
        else:
            for i, j in pairs:
                differing = (actual.masks[j] ^ expected.masks[i]).sum().item()
                union = (actual.masks[j] | expected.masks[i]).sum().item()
                assert differing <= max(2, 0.02 * union), (i, differing, union)
    height, width = ori_shape  # the comparison covers boxes clipped at the border
    assert ((expected.bboxes[:, 2] >= width - 0.01) | (
        expected.bboxes[:, 3] >= height - 0.01)).any()


def check_against_mmdet(detector: Detector, images: list[Path]) -> None:
    for paths in batches(images):
        data = make_batch(detector.cfg, paths)
        samples = data['data_samples']
        assert all(s.scale_factor != (1.0, 1.0) for s in samples)
        outputs, processed = detector.eager(data)
        assert_graph_equals_mmdet(detector, data, outputs)
        expected = detector.mmdet(data)
        shapes = [tuple(s.ori_shape) for s in samples]
        for args in zip(detector.predictions(outputs, processed), expected, shapes):
            assert_predictions_match(*args)
        if detector.onnx_file is not None:
            for args in zip(detector.onnx_predictions(data), expected, shapes):
                assert_predictions_match(*args, min_matched=0.97)


@pytest.fixture(scope='module')
def mask_rcnn(tmp_path_factory) -> Detector:
    # fewer than max_per_img detections: the outputs end in padding rows
    return Detector(load_cfg(DET_DEMO, {'model.test_cfg.rcnn.score_thr': 0.29}),
                    tmp_path_factory.mktemp('mask_rcnn'))


def test_mask_rcnn_equals_mmdet_at_borders_and_in_batches(mask_rcnn, images):
    check_against_mmdet(mask_rcnn, images)
    expected = mask_rcnn.mmdet(make_batch(mask_rcnn.cfg, images))
    assert all(len(e.scores) < 100 for e in expected)  # the outputs' padding rows were read


@pytest.mark.slow
def test_cascade_mask_rcnn_equals_mmdet_at_borders_and_in_batches(tmp_path, images):
    """The paper's Cascade heads (class-specific, GIoU 4conv1fc), masks averaged over the
    three stages, against mmdet's CascadeRoIHead."""
    check_against_mmdet(Detector(load_cfg(CASCADE, ATTO_CASCADE), tmp_path), images)


@pytest.mark.slow
def test_box_only_class_agnostic_cascade_equals_mmdet(tmp_path, images):
    """mmdet's own Cascade R-CNN: class-agnostic regression, no mask head; exported as
    ``dets`` and ``labels`` only, and run by ONNXRuntimeDetector."""
    detector = Detector(cascade_box_cfg(), tmp_path)
    assert detector.output_names == ['dets', 'labels']
    assert all(head.reg_class_agnostic for head in detector.model.roi_head.bbox_head)
    check_against_mmdet(detector, images)


@pytest.mark.parametrize('options', [
    # Faster R-CNN: Mask R-CNN without its mask head
    {'model.type': 'FasterRCNN', 'model.roi_head.mask_head': None,
     'model.roi_head.mask_roi_extractor': None},
    # class-agnostic regression and masks; NMS options mmcv honours
    {'model.roi_head.bbox_head.reg_class_agnostic': True,
     'model.roi_head.mask_head.class_agnostic': True,
     'model.test_cfg.rcnn.nms.class_agnostic': True, 'model.test_cfg.rcnn.nms.max_num': 90,
     'model.test_cfg.rpn.nms.max_num': 120, 'model.test_cfg.rpn.nms.split_thr': 100},
    # distinct thresholds, so that reading one for the other shows; a shared extractor;
    # unclipped RPN decoding; mmdet's debugging masks (uint8 probabilities)
    {'model.test_cfg.rpn.nms.iou_threshold': 0.5, 'model.test_cfg.rcnn.nms.iou_threshold': 0.3,
     'model.test_cfg.rcnn.score_thr': 0.15, 'model.test_cfg.rpn.min_bbox_size': 4,
     'model.test_cfg.rcnn.nms.score_threshold': 0.2, 'model.test_cfg.rpn.nms_pre': 100,
     'model.roi_head.mask_roi_extractor': None, 'model.rpn_head.bbox_coder.clip_border': False,
     'model.test_cfg.rcnn.mask_thr_binary': -1},
], ids=['faster_rcnn', 'class_agnostic_nms_options', 'thresholds'])
def test_settings_the_graph_computes_equal_mmdet(options, images):
    """Each setting the graph honours, eagerly against mmdet (the ONNX export of the same
    module is checked above for the shipped configs)."""
    detector = Detector(load_cfg(DET_DEMO, options))
    for paths in batches(images):
        data = make_batch(detector.cfg, paths)
        outputs, processed = detector.eager(data)
        assert_graph_equals_mmdet(detector, data, outputs)
        shapes = [tuple(s.ori_shape) for s in data['data_samples']]
        for args in zip(detector.predictions(outputs, processed), detector.mmdet(data), shapes):
            assert_predictions_match(*args)


@pytest.mark.parametrize('options, message', [
    ({'model.test_cfg.rcnn.nms.type': 'soft_nms'},
     "model.test_cfg.rcnn.nms.type='soft_nms': the exported graph computes hard NMS only"),
    ({'model.test_cfg.rpn.nms.type': 'nms_rotated'},
     "model.test_cfg.rpn.nms.type='nms_rotated': the exported graph computes hard NMS"),
    ({'model.test_cfg.rcnn.nms.offset': 1}, 'model.test_cfg.rcnn.nms.offset=1'),
    ({'model.test_cfg.rcnn.nms.sigma': 0.5}, 'model.test_cfg.rcnn.nms.sigma: not computed'),
    ({'model.test_cfg.rcnn.max_per_img': -1}, 'model.test_cfg.rcnn.max_per_img=-1'),
    ({'model.test_cfg.rcnn.score_thr': -0.1}, 'model.test_cfg.rcnn.score_thr=-0.1'),
    ({'model.roi_head.bbox_head.loss_cls.use_sigmoid': True},
     'model.roi_head.bbox_head.loss_cls.use_sigmoid=True: sigmoid box classification'),
    ({'model.rpn_head.loss_cls.use_sigmoid': False},
     'model.rpn_head.loss_cls.use_sigmoid=False: a softmax RPN is not exported'),
    ({'model.roi_head.type': 'PISARoIHead'}, "model.roi_head.type='PISARoIHead'"),
    ({'model.roi_head.bbox_head.bbox_coder.type': 'LegacyDeltaXYWHBBoxCoder'},
     "model.roi_head.bbox_head.bbox_coder.type='LegacyDeltaXYWHBBoxCoder'"),
    ({'model.rpn_head.anchor_generator.type': 'LegacyAnchorGenerator'},
     "model.rpn_head.anchor_generator.type='LegacyAnchorGenerator'"),
    ({'model.roi_head.mask_roi_extractor.roi_layer.pool_mode': 'max'},
     "model.roi_head.mask_roi_extractor.roi_layer: RoIAlign, pool_mode='max': the exported "
     'graph pools with'),
])
def test_settings_the_graph_does_not_compute_are_refused_by_name(tmp_path, options, message):
    """Before the weights are read (the checkpoint does not exist) and before any trace;
    nothing written."""
    cfg = load_cfg(DET_DEMO, options)
    cfg.dump(str(tmp_path / 'config.py'))
    with pytest.raises(ExportError, match='cannot export this detector: .*' + re.escape(message)):
        export_onnx(str(tmp_path / 'config.py'), str(tmp_path / 'missing.pth'),
                    tmp_path / 'onnx')
    assert not (tmp_path / 'onnx').exists()


def test_cascade_settings_are_refused_per_stage():
    cfg = load_cfg(CASCADE, {**ATTO_CASCADE, 'model.test_cfg.rcnn.nms.type': 'soft_nms'})
    cfg.model.roi_head.bbox_head[1].loss_cls.use_sigmoid = True
    with torch.device('meta'):
        model = build_model(cfg)
    with pytest.raises(ExportError) as error:
        TwoStageDetectorExport(model)
    assert str(error.value) == (
        "cannot export this detector: model.test_cfg.rcnn.nms.type='soft_nms': the exported "
        'graph computes hard NMS only (soft-NMS rescores the candidates one after another, a '
        'sequential loop over all of them that the graph does not compute exactly); '
        'model.roi_head.bbox_head[1].loss_cls.use_sigmoid=True: sigmoid box classification '
        'is not exported (the graph scores boxes with a softmax over the classes and '
        'background)')


def test_tools_export_prints_the_refusal_in_one_line(tmp_path):
    cfg = load_cfg(DET_DEMO, {'model.test_cfg.rcnn.nms.type': 'soft_nms'})
    cfg.dump(str(tmp_path / 'config.py'))
    result = run_tool_main('export', str(tmp_path / 'config.py'), str(tmp_path / 'x.pth'),
                           '--out', str(tmp_path / 'onnx'))
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: cannot export this detector: model.test_cfg.rcnn.nms.type='soft_nms': the "
        'exported graph computes hard NMS only (soft-NMS rescores the candidates one after '
        'another, a sequential loop over all of them that the graph does not compute '
        'exactly)']


def test_runtime_refuses_an_export_with_masks_for_a_box_only_model(mask_rcnn):
    from convnext_dense.deploy.runtime import ExportedModelMismatch
    with pytest.raises(ExportedModelMismatch, match="exported with masks; the config's model "
                                                    'has no mask head'):
        ONNXRuntimeDetector(str(mask_rcnn.onnx_file), 5, with_mask=False)
