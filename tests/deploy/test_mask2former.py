"""Exported Mask2Former against mmseg's (semantic) and mmdet's (instance) ``predict``.

The shipped Mask2Former configs with an atto backbone, one pixel-decoder encoder layer and three
transformer-decoder layers (one per feature level: the same modules and post-processing, fewer
repeats), random weights, on the demo datasets' pictures.
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
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope

from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import load_config
from convnext_dense.demo.data import make_ade20k_dataset
from convnext_dense.demo.run import data_root_options
from convnext_dense.deploy.export import export_graph, export_onnx
from convnext_dense.deploy.runtime import ONNXRuntimeSegmentor, use_onnx_runtime

REPO = Path(__file__).resolve().parents[2]
M2F_ADE = REPO / 'configs/mask2former_convnext_t_ade20k_512.py'
SEG_DEMO = REPO / 'configs/demo/upernet_convnext_demo.py'
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


def spread_votes(head: torch.nn.Module) -> None:
    """Random class and mask embeddings of std 1 and 0.5 (mmdet initialises them small): the
    queries' classes and masks then differ enough for class maps of several classes."""
    torch.nn.init.normal_(head.cls_embed.weight, std=1.0)
    torch.nn.init.normal_(head.mask_embed[-1].weight, std=0.5)


@pytest.fixture(scope='module')
def seg_export(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('m2f_seg')
    data_root = make_ade20k_dataset(tmp / 'data', num_train=1, num_val=2, image_size=(96, 144),
                                    seed=3)
    config = seg_config(tmp, data_root)
    torch.manual_seed(0)
    model = build_model(load_config(str(config))).eval()
    spread_votes(model.decode_head)
    torch.save({'state_dict': model.state_dict()}, tmp / 'seg.pth')
    onnx_file = export_onnx(str(config), str(tmp / 'seg.pth'), tmp / 'onnx')
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
    for shape in [(1, 3, 128, 160), (2, 3, 96, 224)]:
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
    cfg = load_config(str(config))
    use_onnx_runtime(cfg, str(onnx_file))
    with DefaultScope.overwrite_default_scope('mmseg'):
        from mmseg.registry import DATASETS, MODELS
        runtime = MODELS.build(cfg.model).eval()
        dataset = DATASETS.build(cfg.test_dataloader.dataset)
    assert isinstance(runtime, ONNXRuntimeSegmentor)
    model.test_cfg = ConfigDict(mode='whole')
    for index in range(len(dataset)):
        batch = pseudo_collate([dataset[index]])
        with torch.no_grad():
            expected = model.test_step(copy.deepcopy(batch))[0]
            actual = runtime.test_step(copy.deepcopy(batch))[0]
        assert actual.img_shape == (107, 160) and actual.ori_shape == (96, 144)
        ours, theirs = actual.pred_sem_seg.data, expected.pred_sem_seg.data
        assert ours.shape == theirs.shape == (1, 96, 144)
        assert (ours == theirs).float().mean() >= AGREEMENT and len(theirs.unique()) >= 2
        assert np.isfinite(actual.seg_logits.data.numpy()).all()
        torch.testing.assert_close(actual.seg_logits.data, expected.seg_logits.data,
                                   rtol=1e-3, atol=1e-3)
