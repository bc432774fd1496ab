"""The arch table and the backbone's parameter layout (convnext_dense/arch.py)."""
from __future__ import annotations

import pytest
import torch

from convnext_dense import ConvNeXt
from convnext_dense.arch import ARCH_SETTINGS, arch_name, backbone_state_shapes


@pytest.mark.parametrize('kwargs', [
    dict(arch='atto'),
    dict(arch='atto', use_grn=True, layer_scale_init_value=0),
    dict(depths=(1, 2, 3, 1), dims=(8, 16, 24, 32), in_channels=4, out_indices=(1, 3)),
])
def test_state_shapes_are_the_models(kwargs):
    model = ConvNeXt(**kwargs)
    shapes = backbone_state_shapes(model.depths, model.dims, model.use_grn,
                                   layer_scale=kwargs.get('layer_scale_init_value') != 0,
                                   in_channels=model.in_channels, out_indices=model.out_indices)
    actual = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert list(shapes) == list(actual)  # the same keys in the same order
    assert shapes == actual


def test_huge_is_convnext_v2_h():
    """ConvNeXt V2-H: depths 3-3-27-3, dims 352-704-1408-2816; 659M parameters as an
    ImageNet classifier (V2 paper, Table 11): the backbone less its output norms plus
    the final norm and a 1000-way head."""
    assert ARCH_SETTINGS['huge'] == dict(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816))
    assert arch_name((3, 3, 27, 3), (352, 704, 1408, 2816)) == 'huge'
    with torch.device('meta'):
        model = ConvNeXt(arch='huge', use_grn=True, layer_scale_init_value=0)
    dims = model.dims
    classifier = (sum(p.numel() for p in model.parameters()) - 2 * sum(dims)
                  + 2 * dims[-1] + dims[-1] * 1000 + 1000)
    assert classifier == pytest.approx(659e6, rel=0.005)
