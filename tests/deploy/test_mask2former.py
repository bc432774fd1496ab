"""Exported Mask2Former against mmseg's (semantic) and mmdet's (instance) ``predict``.

The shipped Mask2Former configs with an atto backbone, one pixel-decoder encoder layer and three
transformer-decoder layers (one per feature level: the same modules and post-processing, fewer
repeats), random weights, on the demo datasets' pictures.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mmengine.config import Config, ConfigDict
from torchvision.ops import box_iou

from convnext_dense.apis.runner import load_config
from convnext_dense.demo.data import make_ade20k_dataset, make_coco_dataset
from convnext_dense.demo.run import data_root_options
from convnext_dense.deploy.errors import ExportError
from convnext_dense.deploy.export import export_graph, export_onnx
from convnext_dense.deploy.runtime import (
    ONNXRuntimeDetector,
    ONNXRuntimeSegmentor,
)
from tests.deploy.random_exports import (
    export_random_model,
    paired_predictions,
    runtime_and_test_dataset,
)

REPO = Path(__file__).resolve().parents[2]
M2F_ADE = REPO / 'configs/mask2former_convnext_t_ade20k_512.py'
M2F_COCO = REPO / 'configs/mask2former_convnext_t_coco.py'
SEG_DEMO = REPO / 'configs/demo/upernet_convnext_demo.py'
DET_DEMO = REPO / 'configs/demo/mask_rcnn_convnext_demo.py'
ATTO = [40, 80, 160, 320]
#: the ADE20K config's model, narrowed (CI time): what changes is the number of repeats
SEG_OPTIONS = {'model.backbone.arch': 'atto', 'model.backbone.init_cfg': None,
               'model.decode_head.in_channels': ATTO,
               'model.decode_head.pixel_decoder.encoder.num_layers': 1,
               'model.decode_head.transformer_decoder.num_layers': 3}
#: mmseg's class map and the export's agree on at least this share of the pixels
AGREEMENT = 0.995


def seg_config(folder: Path, data_root: Path) -> Path:
    """The ADE20K Mask2Former model (:data:`SEG_OPTIONS`) on the segmentation demo's data and
    classes (6), its pictures padded to multiples of 32 at test time, as a config file."""
    demo = Config.fromfile(str(SEG_DEMO))
    cfg = Config.fromfile(str(M2F_ADE))
    cfg.merge_from_dict(SEG_OPTIONS)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                'test_evaluator'):
        cfg[key] = demo[key]
    head = cfg.model.decode_head
    head.num_classes = demo.num_classes
    head.loss_cls.class_weight = [1.0] * demo.num_classes + [0.1]
    cfg.model.data_preprocessor.size = demo.crop_size
    cfg.merge_from_dict(data_root_options(cfg, data_root))
    path = folder / 'mask2former_seg.py'
    cfg.dump(str(path))
    return path


def spread_votes(head: torch.nn.Module, cls_std: float = 1.0) -> None:
    """Random class and mask embeddings of std ``cls_std`` and 0.5 (mmdet initialises them
    small): the queries' classes and masks then differ enough for class maps of several
    classes. (The instance model takes 0.1: at 1 many class probabilities are 1.0 in float32,
    and the top-k among ties is arbitrary.)"""
    torch.nn.init.normal_(head.cls_embed.weight, std=cls_std)
    torch.nn.init.normal_(head.mask_embed[-1].weight, std=0.5)


@pytest.fixture(scope='module')
def seg_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('m2f_seg')
    data_root = make_ade20k_dataset(tmp / 'data', num_train=1, num_val=1, image_size=(96, 144),
                                    seed=3)
    config = seg_config(tmp, data_root)
    model, onnx_file = export_random_model(
        config, tmp, 'seg', init=lambda model: spread_votes(model.decode_head))
    return model, config, onnx_file


def session(onnx_file: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])


def test_seg_graph_equals_mmsegs_logits(seg_export):
    """The export module's forward is mmseg's ``Mask2FormerHead.predict`` (its ``seg_logits``
    at the input size); ONNX Runtime gives the same at two sizes, one a batch of two."""
    model, config, onnx_file = seg_export
    info = json.loads((onnx_file.parent / 'deploy.json').read_text())
    assert (info['task'], info['output_names'], info['align_corners']) == (
        'segmentation', ['seg_logits'], False)
    nodes = onnx.load(str(onnx_file)).graph.node
    assert {node.domain for node in nodes} <= {''}
    assert 'GridSample' not in {node.op_type for node in nodes}
    graph = export_graph(model, 'segmentation').eval()
    runtime = session(onnx_file)
    torch.manual_seed(1)
    for shape in [(1, 3, 96, 128), (2, 3, 64, 96)]:
        inputs = torch.randn(*shape)
        metas = [dict(img_shape=shape[2:], pad_shape=shape[2:])] * shape[0]
        with torch.no_grad():
            expected = model.decode_head.predict(model.extract_feat(inputs), metas,
                                                 model.test_cfg)
            eager = graph(inputs)
        assert eager.shape == (shape[0], 6, *shape[2:])
        torch.testing.assert_close(eager, expected, rtol=1e-5, atol=1e-5)
        logits = torch.from_numpy(runtime.run(None, {'input': inputs.numpy()})[0])
        torch.testing.assert_close(logits, expected, rtol=1e-3, atol=1e-4)
        agree = (logits.argmax(1) == expected.argmax(1)).float().mean()
        assert agree >= AGREEMENT and len(expected.argmax(1).unique()) >= 2


def test_seg_runtime_matches_mmseg_on_the_dataset(seg_export):
    """ONNXRuntimeSegmentor (tools/test.py's model) on the test dataloader's padded batches:
    the class maps at the original size agree with mmseg's ``predict``."""
    model, config, onnx_file = seg_export
    runtime, dataset = runtime_and_test_dataset(load_config(str(config)), onnx_file, 'mmseg')
    assert isinstance(runtime, ONNXRuntimeSegmentor)
    model.test_cfg = ConfigDict(mode='whole')
    for expected, actual in paired_predictions(model, runtime, dataset):
        assert actual.img_shape == (107, 160) and actual.ori_shape == (96, 144)
        ours, theirs = actual.pred_sem_seg.data, expected.pred_sem_seg.data
        assert ours.shape == theirs.shape == (1, 96, 144)
        assert (ours == theirs).float().mean() >= AGREEMENT and len(theirs.unique()) >= 2
        assert np.isfinite(actual.seg_logits.data.numpy()).all()
        torch.testing.assert_close(actual.seg_logits.data, expected.seg_logits.data,
                                   rtol=1e-3, atol=1e-3)


#: the COCO (instance) config's model, narrowed as :data:`SEG_OPTIONS`, 20 instances per image
INSTANCE_OPTIONS = {'model.backbone.arch': 'atto', 'model.backbone.init_cfg': None,
                    'model.panoptic_head.in_channels': ATTO,
                    'model.panoptic_head.pixel_decoder.encoder.num_layers': 1,
                    'model.panoptic_head.transformer_decoder.num_layers': 3,
                    'model.test_cfg.max_per_image': 20}


def instance_config(folder: Path, data_root: Path) -> Path:
    """The COCO Mask2Former (:data:`INSTANCE_OPTIONS`) on the detection demo's data, classes (5
    things) and test resize (to 160x128 keeping the ratio, padded to multiples of 32)."""
    demo = Config.fromfile(str(DET_DEMO))
    cfg = Config.fromfile(str(M2F_COCO))
    cfg.merge_from_dict(INSTANCE_OPTIONS)
    classes = demo.num_classes
    cfg.model.panoptic_head.num_things_classes = classes
    cfg.model.panoptic_fusion_head.num_things_classes = classes
    cfg.model.panoptic_head.loss_cls.class_weight = [1.0] * classes + [0.1]
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader', 'val_evaluator',
                'test_evaluator'):
        cfg[key] = demo[key]
    cfg.merge_from_dict(data_root_options(cfg, data_root))
    path = folder / 'mask2former_instance.py'
    cfg.dump(str(path))
    return path


@pytest.fixture(scope='module')
def instance_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('m2f_instance')
    data_root = make_coco_dataset(tmp / 'data', num_train=1, num_val=1, image_size=(96, 144),
                                  seed=3)
    config = instance_config(tmp, data_root)
    model, onnx_file = export_random_model(
        config, tmp, 'instance', init=lambda model: spread_votes(model.panoptic_head, cls_std=0.1))
    return model, config, onnx_file


def mask_iou(ours: torch.Tensor, theirs: torch.Tensor) -> torch.Tensor:
    """(A, B) IoU of (A, H, W) and (B, H, W) bool masks."""
    inter = (ours[:, None] & theirs[None]).flatten(2).sum(2).float()
    union = (ours[:, None] | theirs[None]).flatten(2).sum(2).float()
    return inter / union.clamp(min=1)


def matched(dets, labels, masks, expected, score_tol: float, iou: float) -> torch.Tensor:
    """Which of ``expected``'s instances have one of ours of the same class, mask IoU and box
    IoU above ``iou`` and a score within ``score_tol``."""
    dets, labels, masks = (torch.as_tensor(t) for t in (dets, labels, masks))
    same = (expected.labels[:, None] == labels[None]) & (
        (expected.scores[:, None] - dets[None, :, 4]).abs() <= score_tol)
    boxes = box_iou(expected.bboxes, dets[:, :4])
    boxes = torch.where(expected.bboxes.sum(1, keepdim=True) == 0, 1.0, boxes)  # empty masks
    return (same & (mask_iou(expected.masks, masks) > iou) & (boxes > iou)).any(1)


def test_instance_graph_equals_mmdets_predict_padded_and_in_onnx_runtime(instance_export):
    """Eager: mmdet's ``predict(rescale=False)`` on a padded batch of two sizes (masks and
    boxes equal, scores to 1e-5). ONNX Runtime at two input sizes, one a padded batch: the
    same instances (class, mask and box IoU > 0.99, score within 1e-3)."""
    from mmdet.structures import DetDataSample
    model, config, onnx_file = instance_export
    info = json.loads((onnx_file.parent / 'deploy.json').read_text())
    assert (info['model_type'], info['output_names'], info['mask_layout'], info['padding']) == (
        'Mask2Former', ['dets', 'labels', 'masks'], 'image', 'none')
    nodes = onnx.load(str(onnx_file)).graph.node
    assert {node.domain for node in nodes} <= {''}
    graph = export_graph(model, 'detection').eval()
    session = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    torch.manual_seed(2)
    for batch_shape, shapes in [((96, 128), [(96, 128)]), ((128, 96), [(128, 96), (100, 70)])]:
        inputs = torch.randn(len(shapes), 3, *batch_shape)
        img_shape = torch.tensor(shapes)
        samples = [DetDataSample(metainfo=dict(img_shape=s, ori_shape=s, scale_factor=(1., 1.),
                                               batch_input_shape=batch_shape)) for s in shapes]
        with torch.no_grad():
            expected = model.predict(inputs, samples, rescale=False)
            dets, labels, masks = graph(inputs, img_shape)
        outputs = session.run(None, {'input': inputs.numpy(), 'img_shape': img_shape.numpy()})
        assert outputs[2].shape == (len(shapes), 20, *batch_shape)
        assert outputs[2].dtype == np.float32
        for index, (height, width) in enumerate(shapes):
            reference = expected[index].pred_instances
            assert len(reference) == 20 and len(reference.labels.unique()) >= 2
            assert not masks[index, :, height:].any() and not masks[index, :, :, width:].any()
            crop = masks[index, :, :height, :width] > 0.5
            assert matched(dets[index], labels[index], crop, reference, 1e-5, 0.9999).all()
            ours = [torch.from_numpy(o[index]) for o in outputs]
            assert matched(ours[0], ours[1], ours[2][:, :height, :width] > 0.5, reference,
                           1e-3, 0.99).all()


def test_instance_runtime_matches_mmdet_on_the_dataset(instance_export):
    """ONNXRuntimeDetector (tools/test.py's model) on the test dataloader's images (96x144
    resized to 107x160, padded to 128x160): mmdet's ``predict`` at the original size, the
    masks resized from the input size (mask IoU > 0.9; scores, computed on the input, within
    0.02)."""
    model, config, onnx_file = instance_export
    runtime, dataset = runtime_and_test_dataset(load_config(str(config)), onnx_file, 'mmdet')
    assert isinstance(runtime, ONNXRuntimeDetector)
    for reference, actual in paired_predictions(model, runtime, dataset):
        expected = reference.pred_instances
        assert actual.ori_shape == (96, 144) and actual.img_shape == (107, 160)
        ours = actual.pred_instances
        assert ours.masks.shape == (20, 96, 144) == expected.masks.shape
        dets = torch.cat([ours.bboxes, ours.scores[:, None]], 1)
        assert matched(dets, ours.labels, ours.masks, expected, 0.02, 0.9).all()


@pytest.mark.parametrize('options, messages', [
    ({'model.test_cfg.panoptic_on': True, 'model.test_cfg.mask_thr': 0.3,
      'model.panoptic_head.num_stuff_classes': 3,
      'model.panoptic_fusion_head.num_stuff_classes': 3,
      'model.panoptic_head.loss_cls.class_weight': [1.0] * 83 + [0.1]},
     ['model.test_cfg.panoptic_on=True: the exported graph gives instance results only',
      'model.test_cfg.mask_thr: not computed',
      'model.panoptic_fusion_head.num_stuff_classes=3: ']),
    ({'model.test_cfg.semantic_on': True, 'model.test_cfg.instance_on': False},
     ['model.test_cfg.semantic_on=True: ', 'model.test_cfg.instance_on=False: ']),
])
def test_instance_settings_the_graph_does_not_compute_are_refused(tmp_path, options, messages):
    """Each setting named in one error, before anything is traced or written."""
    with pytest.raises(ExportError) as error:
        export_onnx(str(M2F_COCO), None, tmp_path / 'onnx', shape=(64, 64),
                    cfg_options={**INSTANCE_OPTIONS, **options})
    for message in messages:
        assert message in str(error.value)
    assert not (tmp_path / 'onnx').exists()
