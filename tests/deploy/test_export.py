"""tools/export.py graphs in ONNX Runtime against the mmdet/mmseg models they come from.

Random-weight models of the shipped configs are saved as checkpoints, exported, and run by
ONNX Runtime at two input sizes (one of them a batch of two); the references are mmseg's
whole-image inference and mmdet's own ``predict`` on the same weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.config import Config

from convnext_dense.apis.models import build_model
from convnext_dense.deploy.detection import TwoStageDetectorExport
from convnext_dense.deploy.export import export_onnx

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = 'configs/demo/upernet_convnext_demo.py'
DET_DEMO = 'configs/demo/mask_rcnn_convnext_demo.py'
ATTO_CASCADE = {'model.backbone.arch': 'atto', 'model.backbone.init_cfg': None,
                'model.neck.in_channels': [40, 80, 160, 320],
                'model.test_cfg.rcnn.score_thr': 0.01}  # 80 classes of a random model


def random_checkpoint(config: str, path: Path, options: dict | None = None,
                      seed: int = 0) -> tuple[torch.nn.Module, Path]:
    cfg = Config.fromfile(str(REPO / config))
    cfg.merge_from_dict(options or {})
    torch.manual_seed(seed)
    model = build_model(cfg)
    torch.save({'state_dict': model.state_dict()}, path)
    return model, path


def session(onnx_file: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])


def test_segmentor_class_map_matches_mmseg_at_two_sizes(tmp_path):
    model, checkpoint = random_checkpoint(SEG_DEMO, tmp_path / 'seg.pth')
    onnx_file = export_onnx(str(REPO / SEG_DEMO), str(checkpoint), tmp_path / 'onnx')
    info = json.loads((onnx_file.parent / 'deploy.json').read_text())
    assert (info['task'], info['output_names'], info['dynamic']) == (
        'segmentation', ['output'], True)
    assert info['classes'][1] == 'circle' and info['channel_order'] == 'RGB'
    assert info['mean'] == [123.675, 116.28, 103.53]
    model.test_cfg = dict(mode='whole')
    runtime = session(onnx_file)
    for shape in [(1, 3, 128, 160), (2, 3, 96, 224)]:
        inputs = torch.randn(*shape)
        output = runtime.run(None, {'input': inputs.numpy()})[0]
        with torch.no_grad():
            logits = model.encode_decode(inputs, [dict(img_shape=shape[2:])] * shape[0])
        expected = logits.argmax(dim=1, keepdim=True).numpy()
        assert output.shape == expected.shape and output.dtype == np.int64
        assert (output == expected).mean() >= 0.999


def mmdet_predictions(model: torch.nn.Module, inputs: torch.Tensor) -> list:
    height, width = inputs.shape[2:]
    samples = [DetDataSample(metainfo=dict(img_shape=(height, width), ori_shape=(height, width),
                                           scale_factor=(1.0, 1.0), pad_shape=(height, width),
                                           batch_input_shape=(height, width)))
               for _ in range(len(inputs))]
    with torch.no_grad():
        return [s.pred_instances for s in model.predict(inputs, samples, rescale=False)]


def assert_detections_match(dets: np.ndarray, labels: np.ndarray, expected) -> None:
    """Each detection matches one of mmdet's (same class, IoU > 0.99); boxes and scores within
    1e-3 relative. Random models score many boxes alike, so near-ties may order them otherwise
    or swap the last few in or out of the top ``max_per_img``: 97 % must match."""
    from mmdet.structures.bbox import bbox_overlaps
    keep = dets[:, 4] > 0
    dets, labels = torch.from_numpy(dets[keep]), torch.from_numpy(labels[keep])
    assert len(expected.scores) > 0 and abs(len(dets) - len(expected.scores)) <= 3
    same_class = labels[:, None] == expected.labels[None, :]
    overlaps = bbox_overlaps(dets[:, :4], expected.bboxes) * same_class
    best, match = overlaps.max(dim=1)
    matched = best > 0.99
    assert matched.float().mean() >= 0.97
    scale = expected.bboxes.abs().max()
    assert ((dets[matched, :4] - expected.bboxes[match[matched]]).abs() <= 1e-3 * scale).all()
    torch.testing.assert_close(dets[matched, 4], expected.scores[match[matched]],
                               rtol=1e-3, atol=1e-6)


def check_detector(config: str, tmp_path: Path, options: dict | None = None) -> None:
    model, checkpoint = random_checkpoint(config, tmp_path / 'det.pth', options)
    model.eval()
    # The graph's own forward is mmdet's computation, exactly.
    graph = TwoStageDetectorExport(model)
    inputs = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        dets, labels, masks = graph(inputs)
    expected = mmdet_predictions(model, inputs)[0]
    count = len(expected.scores)
    assert count > 0
    assert torch.equal(dets[0, :count, 4], expected.scores)
    assert torch.equal(dets[0, :count, :4], expected.bboxes)
    assert torch.equal(labels[0, :count], expected.labels)
    assert masks.shape == (1, len(dets[0]), 28, 28)

    onnx_file = export_onnx(str(REPO / config), str(checkpoint), tmp_path / 'onnx',
                            cfg_options=options)
    runtime = session(onnx_file)
    for shape in [(1, 3, 128, 160), (2, 3, 96, 224)]:
        inputs = torch.randn(*shape)
        dets, labels, masks = runtime.run(None, {'input': inputs.numpy()})
        assert dets.shape == (shape[0], 100, 5) and masks.shape == (shape[0], 100, 28, 28)
        for image, expected in enumerate(mmdet_predictions(model, inputs)):
            assert_detections_match(dets[image], labels[image], expected)


def test_mask_rcnn_detections_match_mmdet_at_two_sizes(tmp_path):
    check_detector(DET_DEMO, tmp_path)


@pytest.mark.slow
def test_cascade_mask_rcnn_detections_match_mmdet_at_two_sizes(tmp_path):
    check_detector('configs/cascade_mask_rcnn_convnext_t_coco.py', tmp_path, ATTO_CASCADE)


def narrow_options(config: Path) -> dict:
    """The config's depths and heads with a backbone of 1/4 of its widths (CI time)."""
    from convnext_dense.models.backbone import ARCH_SETTINGS
    cfg = Config.fromfile(str(config))
    arch = ARCH_SETTINGS[cfg.model.backbone.arch]
    dims = [d // 4 for d in arch['dims']]
    options = {'model.backbone.arch': None, 'model.backbone.depths': list(arch['depths']),
               'model.backbone.dims': dims, 'model.backbone.init_cfg': None}
    if 'neck' in cfg.model:
        options['model.neck.in_channels'] = dims
    else:
        options['model.decode_head.in_channels'] = dims
        options['model.auxiliary_head.in_channels'] = dims[2]
    return options


@pytest.mark.slow
@pytest.mark.parametrize('config', sorted(p.name for p in (REPO / 'configs').glob('*.py')))
def test_every_config_exports_and_runs(tmp_path, config):
    """Each shipped config's graph (its depths, heads and post-processing; the backbone at a
    quarter of its widths to keep CI short) exports and runs in ONNX Runtime at another size
    than it was traced with (the two-size comparisons with PyTorch are above)."""
    path = REPO / 'configs' / config
    onnx_file = export_onnx(str(path), None, tmp_path / 'onnx', shape=(128, 160),
                            cfg_options=narrow_options(path))
    outputs = session(onnx_file).run(
        None, {'input': np.random.randn(2, 3, 96, 224).astype(np.float32)})
    if config.startswith(('mask_rcnn', 'cascade')):
        dets, labels, masks = outputs
        assert dets.shape == (2, 100, 5) and labels.shape == (2, 100)
        assert masks.shape == (2, 100, 28, 28) and np.isfinite(dets).all()
    else:
        assert outputs[0].shape == (2, 1, 96, 224)
        assert 0 <= outputs[0].min() and outputs[0].max() < 150
