"""Registration in mmdet and mmseg: one class, built from config dicts and files."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import mmdet.models  # noqa: F401  (registers mmdet's models)
import mmseg.models  # noqa: F401  (registers mmseg's models)
import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.registry import DefaultScope, Registry
from mmseg.registry import MODELS as MMSEG_MODELS

import convnext_dense
from convnext_dense import ConvNeXt
from convnext_dense.registry import register
from tests.batches import mask_rcnn_batch, upernet_batch
from tests.conftest import load_packaged_config

ATTO_DIMS = [40, 80, 160, 320]


def test_one_class_registered_in_both_toolboxes():
    assert convnext_dense.REGISTERED_SCOPES == ['mmdet', 'mmseg']
    assert MMDET_MODELS.get('ConvNeXt') is ConvNeXt
    assert MMSEG_MODELS.get('ConvNeXt') is ConvNeXt
    det = MMDET_MODELS.build(dict(type='ConvNeXt', arch='atto', out_indices=(1, 2)))
    seg = MMSEG_MODELS.build(dict(type='ConvNeXt', arch='femto', drop_path_rate=0.1))
    assert isinstance(det, ConvNeXt) and det.out_channels == (80, 160)
    assert isinstance(seg, ConvNeXt) and seg.out_channels == (48, 96, 192, 384)


def test_segmentation_tta_model_is_registered_in_mmseg_only():
    assert MMSEG_MODELS.get('SegTTAModelWithTestCfg') is convnext_dense.SegTTAModelWithTestCfg
    assert 'SegTTAModelWithTestCfg' not in MMDET_MODELS.module_dict


def test_register_refuses_to_shadow_another_class():
    registry = Registry('models', scope='probe')
    register(registry, ConvNeXt)
    register(registry, ConvNeXt)  # idempotent
    other = type('ConvNeXt', (), {})
    with pytest.raises(KeyError, match="already has 'ConvNeXt'"):
        register(registry, other)


def test_mask_rcnn_with_convnext_trains_and_predicts(tmp_path):
    cfg = load_packaged_config(tmp_path, 'mmdet::_base_/models/mask-rcnn_r50_fpn.py')
    cfg.model.backbone = dict(type='ConvNeXt', arch='atto', drop_path_rate=0.1)
    cfg.model.neck.in_channels = ATTO_DIMS
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(cfg.model)
    model.init_weights()
    assert isinstance(model.backbone, ConvNeXt)

    data = mask_rcnn_batch(model)
    model.train()
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    total.backward()
    assert torch.isfinite(total)
    assert model.backbone.stages[0][0].dwconv.weight.grad is not None

    model.eval()
    data = mask_rcnn_batch(model, training=False)
    with torch.no_grad():
        result = model(**data, mode='predict')[0]
    assert 'bboxes' in result.pred_instances


def test_upernet_with_convnext_trains(tmp_path):
    cfg = load_packaged_config(tmp_path, 'mmseg::_base_/models/upernet_r50.py')
    cfg.model.pretrained = None  # the ResNet base points at a hub checkpoint
    cfg.model.backbone = dict(type='ConvNeXt', arch='atto')
    cfg.model.decode_head.in_channels = ATTO_DIMS
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.auxiliary_head.in_channels = ATTO_DIMS[2]
    cfg.model.auxiliary_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor.size = (64, 64)
    with DefaultScope.overwrite_default_scope('mmseg'):
        model = MMSEG_MODELS.build(cfg.model).train()
    data = upernet_batch(model)
    losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    total.backward()
    assert torch.isfinite(total)
    assert isinstance(model.backbone, ConvNeXt)


def run_python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_custom_imports_in_a_config_file(tmp_path):
    config = tmp_path / 'cfg.py'
    config.write_text(textwrap.dedent("""
        custom_imports = dict(imports=['convnext_dense'], allow_failed_imports=False)
        default_scope = 'mmseg'
        model = dict(type='ConvNeXt', arch='pico', out_indices=[3])
    """))
    result = run_python(f"""
        from mmengine import Config
        from mmengine.registry import MODELS, DefaultScope
        import sys
        assert 'convnext_dense' not in sys.modules
        cfg = Config.fromfile({str(config)!r})
        assert 'convnext_dense' in sys.modules
        import mmseg.registry
        model = mmseg.registry.MODELS.build(cfg.model)
        print(type(model).__module__, model.out_channels)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'convnext_dense.models.backbone (512,)' in result.stdout


@pytest.mark.parametrize('missing, present', [('mmseg', 'mmdet'), ('mmdet', 'mmseg')])
def test_import_works_with_only_one_toolbox(tmp_path, missing, present):
    result = run_python(f"""
        import sys
        sys.modules[{missing!r}] = None  # as if it were not installed
        import convnext_dense
        import {present}.registry
        print(convnext_dense.REGISTERED_SCOPES)
        print(type({present}.registry.MODELS.build(dict(type='ConvNeXt', arch='atto'))).__name__)
    """, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [f"['{present}']", 'ConvNeXt']
