"""checkpoint/model_fit.py: a DINO checkpoint of the other OpenMMLab stack is named as such.

mmdet 3.3.0's DINO decoder builds ``ref_point_head`` with ``embed_dims * 2`` inputs,
onedl-mmdetection's with ``embed_dims * 4``. The real decoder of the installed mmdet (tiny:
one layer, 32 dims) against weights whose ``ref_point_head`` has the other stack's width.
"""
from __future__ import annotations

import pytest
import torch
from mmdet.models.layers.transformer import DinoTransformerDecoder
from torch import nn

from convnext_dense.checkpoint.model_fit import (
    DINO_REF_POINT_INPUTS,
    describe_misfit,
    dino_stack,
)
from convnext_dense.stack import current_stack

EMBED = 32
KEY = 'decoder.ref_point_head.layers.0.weight'


@pytest.fixture(scope='module')
def dino() -> nn.Module:
    model = nn.Module()
    model.decoder = DinoTransformerDecoder(num_layers=1, post_norm_cfg=None, layer_cfg=dict(
        self_attn_cfg=dict(embed_dims=EMBED, num_heads=2),
        cross_attn_cfg=dict(embed_dims=EMBED, num_levels=1, num_points=1, num_heads=2),
        ffn_cfg=dict(embed_dims=EMBED, feedforward_channels=64)))
    return model


def other_stacks_weights(model: nn.Module) -> tuple[dict, str]:
    here = current_stack('mmdet')
    (factor, other), = [(f, s) for f, s in DINO_REF_POINT_INPUTS.items() if s != here]
    state = dict(model.state_dict())
    state[KEY] = torch.zeros(EMBED, EMBED * factor)
    return state, other


def test_the_installed_mmdet_builds_its_stacks_dino(dino):
    assert dino_stack(dino.state_dict()) == current_stack('mmdet')
    assert dino_stack({'backbone.stem.0.weight': torch.zeros(8, 3, 4, 4)}) is None


def test_a_dino_checkpoint_of_the_other_stack_is_named(dino):
    state, other = other_stacks_weights(dino)
    here = current_stack('mmdet')
    assert dino_stack(state) == other
    message = describe_misfit(state, dino, 'dino.pth', "the config's model")
    assert message.startswith(
        f"dino.pth does not fit the config's model (Module): OpenMMLab stack: this DINO "
        f'checkpoint was made with the {other} stack'), message
    names = {'upstream': 'mmdet 3.3.0', 'onedl': 'onedl-mmdetection 3.5.1'}
    assert f'({names[other]}: ref_point_head takes embed_dims * ' in message
    assert f"the config's model is built by the {here} stack installed here ({names[here]}" \
        in message
    assert f'use it where the {other} stack is installed (make ... STACK={other})' in message
    assert f'{KEY}: checkpoint (32, ' in message


def test_other_ref_point_head_misfits_name_no_stack(dino):
    """Another embed_dims is an ordinary shape misfit, not a stack difference."""
    state = dict(dino.state_dict())
    state[KEY] = torch.zeros(EMBED * 2, EMBED * 6)
    message = describe_misfit(state, dino, 'dino.pth', "the config's model")
    assert 'OpenMMLab stack' not in message and KEY in message
