"""tools/export.py graphs of the shipped configs: each config builds into the graph exported for
it, and each distinct graph exports and runs in ONNX Runtime.

The exports against the mmdet/mmseg models they come from, at two input sizes (one of them a
batch of two): test_detection.py (mmdet's ``predict``) and test_segmentation.py (mmseg's).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mmengine.config import Config

from convnext_dense.apis.models import build_model
from convnext_dense.deploy.export import (
    ExportError,
    export_graph,
    export_onnx,
    graph_inputs,
    task_of,
)
from tests.conftest import narrow_options

REPO = Path(__file__).resolve().parents[2]


def session(onnx_file: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(onnx_file), providers=['CPUExecutionProvider'])


CONFIGS = sorted(p.name for p in (REPO / 'configs').glob('*.py'))
#: the query-based models (deformable attention): exported in their own test modules
QUERY_MODEL_CONFIGS = ('dino_4scale_convnext_t_coco.py', 'mask2former_convnext_t_coco.py',
                       'mask2former_convnext_t_ade20k_512.py')


class Graph(NamedTuple):
    """A shipped config's export module, its backbone at quarter widths."""
    settings: str  # what of the config its structure depends on (JSON)
    modules: list  # (name, type) of each module, in order
    params: list  # parameter names, in order
    width: int  # sum of the backbone's widths


@functools.cache
def graph_of(config: str) -> Graph | None:
    """``config``'s export module at quarter widths, built on the meta device (no weights);
    ``None`` for a model the export refuses (:func:`task_of`).

    Its settings are all of ``cfg.model`` (``export_onnx`` builds nothing else) but the
    backbone's widths, the input channels that follow them, and the training-only drop-path
    rate. DropPath is listed as ``nn.Identity`` (which the first block of a stage has in its
    place): both are the identity in eval mode.
    """
    cfg = Config.fromfile(str(REPO / 'configs' / config))
    try:
        task = task_of(cfg)
    except ExportError:
        return None
    cfg.merge_from_dict(narrow_options(cfg))
    model = cfg.model.to_dict()
    for key in ('dims', 'drop_path_rate'):
        model['backbone'].pop(key, None)
    for head in ('neck', 'decode_head', 'auxiliary_head'):
        for key in ('in_channels', 'c1_in_channels'):
            model.get(head, {}).pop(key, None)
    with torch.device('meta'):
        graph = export_graph(build_model(cfg), task)
    modules = [(name, 'Identity' if type(m).__name__ == 'DropPath' else type(m).__name__)
               for name, m in graph.named_modules()]
    return Graph(json.dumps(model, sort_keys=True, default=repr), modules,
                 [name for name, _ in graph.named_parameters()],
                 sum(cfg.model.backbone.dims))


def _settings(config: str) -> str | None:
    try:
        return graph_of(config).settings
    except Exception:  # fails that config's own test, not the others'
        return None


@functools.cache
def exported_config(config: str) -> str:
    """The config whose graph CI exports for ``config``: of the shipped configs with the same
    settings, the narrowest. Configs that differ only in backbone width (T/S/B/L/XL of the same
    depths) or in training settings (ImageNet-1K/22K weights, optimizer, drop-path rate) export
    one graph but for the sizes of its weights."""
    settings = graph_of(config).settings
    same = [other for other in CONFIGS if other == config or _settings(other) == settings]
    return min(same, key=lambda other: (graph_of(other).width, other))


@pytest.mark.parametrize('config', CONFIGS)
def test_config_builds_into_the_graph_exported_for_it(config):
    """Each config at quarter widths builds into an export module with the same modules and
    parameters, in the same order, as the config exported for its graph below. A model the
    export does not support would be refused by name (every shipped config exports)."""
    graph = graph_of(config)
    if graph is None:
        with pytest.raises(ExportError, match='cannot export a .*: supported '):
            export_onnx(str(REPO / 'configs' / config), None, '/nonexistent/onnx')
        return
    exported = graph_of(exported_config(config))
    assert len(graph.params) > 100 and any(  # DINO's graph holds the detector
        name.endswith('backbone.stages.2.0') and kind == 'ConvNeXtBlock'
        for name, kind in graph.modules)
    assert (graph.modules, graph.params) == (exported.modules, exported.params), (
        exported_config(config))


@pytest.mark.slow
@pytest.mark.parametrize('config', CONFIGS)
def test_every_graph_exports_and_runs(tmp_path, config):
    """Each shipped config's graph (its depths, heads and post-processing; the backbone at a
    quarter of its widths to keep CI short) exports and runs in ONNX Runtime at another size
    than it was traced with (the two-size comparisons with PyTorch: test_detection.py,
test_segmentation.py). One config per
    graph is exported (:func:`exported_config`; the others: the test above)."""
    if graph_of(config) is None:
        pytest.skip('a model the export refuses (the test above)')
    if config in QUERY_MODEL_CONFIGS:
        pytest.skip('exported, run and compared with mmdet/mmseg in test_dino.py and '
                    'test_mask2former.py (fewer layers; the same modules)')
    if exported_config(config) != config:
        pytest.skip(f'the graph of {exported_config(config)} but for its widths')
    path = REPO / 'configs' / config
    cfg = Config.fromfile(str(path))
    options = narrow_options(cfg)
    if cfg.model.get('test_cfg', {}).get('rpn'):  # 100 proposals per image in place of 1000:
        options['model.test_cfg.rpn.max_per_img'] = 100  # the same graph on fewer RoIs
    onnx_file = export_onnx(str(path), None, tmp_path / 'onnx', shape=(128, 160),
                            cfg_options=options)
    info = json.loads((onnx_file.parent / 'deploy.json').read_text())
    inputs = graph_inputs(info['task'], torch.randn(2, 3, 96, 224))
    outputs = session(onnx_file).run(None, {k: v.numpy() for k, v in inputs.items()})
    if info['task'] == 'detection':
        dets, labels, masks = outputs
        assert dets.shape == (2, 100, 5) and labels.shape == (2, 100)
        assert masks.shape == (2, 100, 28, 28) and np.isfinite(dets).all()
    else:  # the decode head's logits for ADE20K's 150 classes, at 1/4 of the input
        assert outputs[0].shape == (2, 150, 96 // 4, 224 // 4)
        assert np.isfinite(outputs[0]).all()
