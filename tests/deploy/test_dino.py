"""Exported DINO against mmdet's ``predict``: eager, ONNX Runtime at two sizes, the tools.

The shipped DINO config with an atto backbone, one encoder and two decoder layers and 30
queries (the same modules and post-processing, fewer repeats; the small pictures have fewer
than 900 encoder tokens), random weights (``init_weights``, seeded), on the detection demo's
pictures and classes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config
from torchvision.ops import box_iou

from convnext_dense.apis.models import initialise_weights
from convnext_dense.apis.runner import load_config
from convnext_dense.demo.data import make_coco_dataset
from convnext_dense.demo.run import data_root_options
from convnext_dense.deploy.errors import ExportError
from convnext_dense.deploy.export import export_graph, export_onnx
from convnext_dense.deploy.runtime import ONNXRuntimeDetector
from tests.conftest import run_tool_main
from tests.deploy.random_exports import (
    export_random_model,
    paired_predictions,
    runtime_and_test_dataset,
)

REPO = Path(__file__).resolve().parents[2]
DINO = REPO / 'configs/dino_4scale_convnext_t_coco.py'
DET_DEMO = REPO / 'configs/demo/mask_rcnn_convnext_demo.py'
#: the DINO config's model, narrowed (CI time): fewer repeats of the same layers
OPTIONS = {'model.backbone.arch': 'atto', 'model.backbone.init_cfg': None,
           'model.neck.in_channels': [80, 160, 320], 'model.num_queries': 30,
           'model.encoder.num_layers': 1, 'model.decoder.num_layers': 2,
           'model.test_cfg.max_per_img': 40}


def dino_config(folder: Path, data_root: Path) -> Path:
    """The narrowed DINO (:data:`OPTIONS`) on the detection demo's data, classes and test
    resize (to 160x128, keeping the ratio), as a config file."""
    demo = Config.fromfile(str(DET_DEMO))
    cfg = Config.fromfile(str(DINO))
    cfg.merge_from_dict(OPTIONS)
    cfg.model.bbox_head.num_classes = demo.num_classes
    pipeline = [step for step in demo.test_pipeline if step['type'] != 'LoadAnnotations']
    for key in ('val_dataloader', 'test_dataloader'):
        cfg[key] = copy.deepcopy(demo[key])
        cfg[key].dataset.pipeline = pipeline
    cfg.train_dataloader = demo.train_dataloader
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = demo.val_evaluator.ann_file
    cfg.merge_from_dict(data_root_options(cfg, data_root))
    path = folder / 'dino.py'
    cfg.dump(str(path))
    return path


@pytest.fixture(scope='module')
def dino_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('dino')
    data_root = make_coco_dataset(tmp / 'data', num_train=1, num_val=1, image_size=(96, 144),
                                  seed=3)
    config = dino_config(tmp, data_root)
    model, onnx_file = export_random_model(config, tmp, 'dino', init=initialise_weights)
    return model, config, onnx_file, tmp


def samples_for(shapes, batch_shape):
    return [DetDataSample(metainfo=dict(img_shape=s, batch_input_shape=batch_shape,
                                        scale_factor=(1.0, 1.0))) for s in shapes]


def assert_detections_match(dets, labels, expected, min_matched=1.0) -> None:
    """Each of mmdet's detections has one of the same class with IoU > 0.99 and a score
    within 1e-3 (``min_matched``: the share that must)."""
    dets, labels = torch.as_tensor(dets), torch.as_tensor(labels)
    iou = box_iou(expected.bboxes, dets[:, :4])
    same = (expected.labels[:, None] == labels[None]) & (
        (expected.scores[:, None] - dets[None, :, 4]).abs() <= 1e-3)
    matched = ((iou > 0.99) & same).any(1)
    assert matched.float().mean() >= min_matched, matched.float().mean()


def test_graph_equals_mmdets_predict_padded_and_in_onnx_runtime(dino_export):
    """Eager: mmdet's ``predict(rescale=False)`` on a padded batch of two sizes (boxes to 1e-4
    px, scores, labels). ONNX Runtime at two input sizes, one a padded batch: the same
    detections (class, IoU > 0.99, score within 1e-3). The graph has no custom op."""
    model, config, onnx_file, _ = dino_export
    info = json.loads((onnx_file.parent / 'deploy.json').read_text())
    assert (info['task'], info['model_type'], info['output_names']) == (
        'detection', 'DINO', ['dets', 'labels'])
    assert info['input_names'] == ['input', 'img_shape'] and info['score_threshold'] == 0.0
    nodes = onnx.load(str(onnx_file)).graph.node
    assert {node.domain for node in nodes} <= {''}
    assert 'GridSample' not in {node.op_type for node in nodes}
    graph = export_graph(model, 'detection').eval()
    session = ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])
    torch.manual_seed(2)
    for batch_shape, shapes in [((96, 128), [(96, 128)]), ((128, 96), [(128, 96), (100, 70)])]:
        inputs = torch.randn(len(shapes), 3, *batch_shape)
        img_shape = torch.tensor(shapes)
        with torch.no_grad():
            expected = model.predict(inputs, samples_for(shapes, batch_shape), rescale=False)
            dets, labels = graph(inputs, img_shape)
        outputs = session.run(None, {'input': inputs.numpy(), 'img_shape': img_shape.numpy()})
        assert outputs[0].shape == (len(shapes), 40, 5) and outputs[1].dtype == np.int64
        for index, sample in enumerate(expected):
            reference = sample.pred_instances
            torch.testing.assert_close(dets[index, :, :4], reference.bboxes, rtol=0, atol=1e-4)
            torch.testing.assert_close(dets[index, :, 4], reference.scores, rtol=0, atol=1e-6)
            assert torch.equal(labels[index], reference.labels)
            height, width = shapes[index]
            assert (reference.bboxes[:, 2] <= width).all() and (
                reference.bboxes[:, 3] <= height).all()
            assert_detections_match(outputs[0][index], outputs[1][index], reference)


def test_runtime_matches_mmdet_on_the_dataset(dino_export):
    """ONNXRuntimeDetector (tools/test.py's model) on the test dataloader's images (96x144
    resized to 107x160): the predictions at the original size are mmdet's ``predict``."""
    model, config, onnx_file, _ = dino_export
    runtime, dataset = runtime_and_test_dataset(load_config(str(config)), onnx_file, 'mmdet')
    assert isinstance(runtime, ONNXRuntimeDetector)
    for reference, actual in paired_predictions(model, runtime, dataset):
        expected = reference.pred_instances
        assert actual.ori_shape == (96, 144) and actual.img_shape == (107, 160)
        ours = actual.pred_instances
        assert len(ours) == len(expected) == 40
        assert_detections_match(torch.cat([ours.bboxes, ours.scores[:, None]], 1), ours.labels,
                                expected)


def test_settings_the_graph_does_not_compute_are_refused_by_name(tmp_path):
    """Each setting named in one error, before anything is traced or written."""
    options = {**OPTIONS, 'model.test_cfg.score_thr': 0.3, 'model.test_cfg.max_per_img': 10 ** 6,
               'model.bbox_head.loss_cls': dict(_delete_=True, type='CrossEntropyLoss',
                                                use_sigmoid=False, class_weight=[1.0] * 81)}
    with pytest.raises(ExportError) as error:
        export_onnx(str(DINO), None, tmp_path / 'onnx', shape=(64, 64), cfg_options=options)
    for message in ('model.bbox_head.loss_cls.use_sigmoid=False: ',
                    'model.test_cfg.score_thr: not computed',
                    'model.test_cfg.max_per_img=1000000: '):
        assert message in str(error.value)
    assert not (tmp_path / 'onnx').exists()


@pytest.mark.slow
def test_tools_test_and_infer_run_the_export(dino_export, tmp_path):
    """tools/test.py evaluates the export with the config's COCO metric; tools/infer.py
    draws and records its detections."""
    model, config, onnx_file, tmp = dino_export
    result = run_tool_main('test', str(config), str(onnx_file), '--work-dir',
                           str(tmp_path / 'work'))
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'coco/bbox_mAP' in result.stdout + result.stderr
    image = next((tmp / 'data' / 'val').glob('*.jpg'))
    result = run_tool_main('infer', str(config), str(onnx_file), str(image), '--out-dir',
                           str(tmp_path / 'out'), '--score-thr', '0')
    assert result.returncode == 0, result.stdout + result.stderr
    images = json.loads((tmp_path / 'out' / 'predictions.json').read_text())['images']
    assert len(images) == 1 and len(images[0]['instances']) == 40
    assert (tmp_path / 'out' / images[0]['vis']).is_file()
