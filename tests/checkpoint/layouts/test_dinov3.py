"""DINOv3 ConvNeXt: the official release's layout and transformers' DINOv3ConvNext.

Reference: transformers' ``DINOv3ConvNextModel`` with random, non-trivial weights.
The official DINOv3 file is written from it by the key map below (transformers'
published conversion, read the other way): DINOv3's ConvNeXt keeps the paper's
names, has no head, and holds its final norm twice, as ``norm.*`` and ``norms.3.*``
(``norms.0-2`` are identities). timm, which reads DINOv3 files, checks that file.
"""
from __future__ import annotations

import re

import pytest
import timm
import torch
from timm.models.convnext import checkpoint_filter_fn
from transformers import DINOv3ConvNextConfig, DINOv3ConvNextModel

from convnext_dense.checkpoint.convert import convert_file
from convnext_dense.checkpoint.errors import CheckpointError
from tests.checkpoint.layouts.reference import (
    INPUT,
    assert_stage_features_match,
    pretrained_backbone,
)
from tests.conftest import randomize_

BACKBONE = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))

#: transformers' DINOv3 ConvNeXt names -> the official DINOv3 release's names.
TO_OFFICIAL = (
    (r'^model\.stages\.(\d+)\.downsample_layers\.(\d)\.', r'downsample_layers.\1.\2.'),
    (r'^model\.stages\.(\d+)\.layers\.(\d+)\.depthwise_conv\.', r'stages.\1.\2.dwconv.'),
    (r'^model\.stages\.(\d+)\.layers\.(\d+)\.layer_norm\.', r'stages.\1.\2.norm.'),
    (r'^model\.stages\.(\d+)\.layers\.(\d+)\.pointwise_conv(\d)\.', r'stages.\1.\2.pwconv\3.'),
    (r'^model\.stages\.(\d+)\.layers\.(\d+)\.gamma$', r'stages.\1.\2.gamma'),
    (r'^layer_norm\.', 'norm.'),
)


@pytest.fixture(scope='module')
def dinov3() -> DINOv3ConvNextModel:
    config = DINOv3ConvNextConfig(depths=list(BACKBONE['depths']),
                                  hidden_sizes=list(BACKBONE['dims']))
    model = randomize_(DINOv3ConvNextModel(config), seed=4).eval()
    assert all(p.abs().min() > 0 for n, p in model.named_parameters() if n.endswith('.gamma'))
    return model


def stage_outputs(model) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model(INPUT, output_hidden_states=True).hidden_states[-4:])


def official_dinov3_state(model) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in model.state_dict().items():
        for pattern, template in TO_OFFICIAL:
            new_key, count = re.subn(pattern, template, key)
            if count:
                state[new_key] = value
                break
        else:
            raise AssertionError(f'unmapped transformers key {key}')
    state.update({'norms.3.weight': state['norm.weight'], 'norms.3.bias': state['norm.bias']})
    return state


def test_official_dinov3_file_gives_the_models_features(tmp_path, dinov3):
    state = official_dinov3_state(dinov3)
    # timm reads DINOv3 files: the file written here is one (strictly, nothing left over)
    reference = timm.create_model('convnext_atto', pretrained=False, depths=BACKBONE['depths'],
                                  dims=BACKBONE['dims'])
    reference.load_state_dict(checkpoint_filter_fn(dict(state), reference), strict=False)
    timm_missing = set(reference.state_dict()) - set(checkpoint_filter_fn(dict(state), reference))
    assert timm_missing <= {'head.fc.weight', 'head.fc.bias'}, timm_missing
    src = tmp_path / 'dinov3_convnext_custom_pretrain.pth'
    torch.save(state, src)
    conversion = convert_file(src)
    assert conversion.src_format == 'dinov3'
    assert sorted(conversion.dropped) == ['norm.bias', 'norm.weight', 'norms.3.bias',
                                          'norms.3.weight']
    assert conversion.arch.layer_scale and not conversion.arch.use_grn
    assert_stage_features_match(pretrained_backbone(src, **BACKBONE), stage_outputs(dinov3))


def test_transformers_dinov3_directory_gives_the_models_features(tmp_path, dinov3):
    dinov3.save_pretrained(tmp_path / 'saved')
    conversion = convert_file(tmp_path / 'saved')
    assert conversion.src_format == 'huggingface-dinov3'
    assert sorted(conversion.dropped) == ['layer_norm.bias', 'layer_norm.weight']
    backbone = pretrained_backbone(tmp_path / 'saved', **BACKBONE)
    assert_stage_features_match(backbone, stage_outputs(dinov3))


def test_dinov3_vit_is_named(tmp_path):
    """A DINOv3 ViT file (its official key names) is refused as what it is."""
    dim = 32
    state = {'cls_token': torch.zeros(1, 1, dim), 'storage_tokens': torch.zeros(1, 4, dim),
             'mask_token': torch.zeros(1, dim), 'rope_embed.periods': torch.ones(8),
             'patch_embed.proj.weight': torch.zeros(dim, 3, 16, 16),
             'patch_embed.proj.bias': torch.zeros(dim),
             'blocks.0.norm1.weight': torch.ones(dim),
             'blocks.0.attn.qkv.weight': torch.zeros(3 * dim, dim),
             'norm.weight': torch.ones(dim)}
    src = tmp_path / 'dinov3_vits16_pretrain.pth'
    torch.save(state, src)
    with pytest.raises(CheckpointError, match=r'a DINOv3 ViT \(vision transformer\), not a '
                                              "ConvNeXt: this backbone takes DINOv3's ConvNeXt"):
        convert_file(src)
