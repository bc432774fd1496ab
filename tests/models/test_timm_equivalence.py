"""Same random weights -> same stage features as timm's independent ConvNeXt."""
from __future__ import annotations

import re

import pytest
import timm
import torch

from convnext_dense import ConvNeXt
from convnext_dense.checkpoint.layouts.timm import timm_to_official
from tests.conftest import randomize_, relative_error

# (timm model name, backbone kwargs): every ConvNeXt size timm has, V1 and V2 (GRN).
TIMM_MODELS = [
    ('convnext_atto', dict(arch='atto')),
    ('convnext_femto', dict(arch='femto')),
    ('convnext_pico', dict(arch='pico')),
    ('convnext_nano', dict(arch='nano')),
    ('convnext_tiny', dict(arch='tiny')),
    ('convnext_small', dict(arch='small')),
    ('convnext_base', dict(arch='base')),
    pytest.param('convnext_large', dict(arch='large'), marks=pytest.mark.slow),
    pytest.param('convnext_xlarge', dict(arch='xlarge'), marks=pytest.mark.slow),
    ('convnextv2_atto', dict(arch='atto', use_grn=True, layer_scale_init_value=0)),
    ('convnextv2_nano', dict(arch='nano', use_grn=True, layer_scale_init_value=0)),
    ('convnextv2_tiny', dict(arch='tiny', use_grn=True, layer_scale_init_value=0)),
]


def load_timm_weights(backbone: ConvNeXt, features_state: dict) -> None:
    """Load a timm ``features_only`` state dict; only the output norms may be missing."""
    # features_only flattens the top-level Sequentials: stem_0.* / stages_0.*
    timm_state = {re.sub(r'^(stem|stages)_(\d+)\.', r'\1.\2.', k): v
                  for k, v in features_state.items()}
    converted, dropped = timm_to_official(timm_state)
    assert dropped == []
    result = backbone.load_state_dict(converted, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == sorted(
        f'norm{i}.{p}' for i in backbone.out_indices for p in ('weight', 'bias'))


@pytest.mark.parametrize('timm_name, kwargs', TIMM_MODELS)
def test_stage_features_equal_timm(timm_name, kwargs):
    torch.manual_seed(0)
    features = timm.create_model(timm_name, pretrained=False, features_only=True)
    randomize_(features, seed=1).eval()
    backbone = ConvNeXt(**kwargs).eval()
    load_timm_weights(backbone, features.state_dict())
    randomize_(torch.nn.ModuleList(getattr(backbone, f'norm{i}') for i in range(4)), seed=2)

    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        expected = [getattr(backbone, f'norm{i}')(f) for i, f in enumerate(features(x))]
        actual = backbone(x)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape
        assert relative_error(a, e) < 1e-5, f'stage {i}: {relative_error(a, e):.2e}'
