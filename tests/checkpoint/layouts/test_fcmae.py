"""ConvNeXt V2 FCMAE pre-training checkpoints (sparse MinkowskiEngine encoder).

MinkowskiEngine does not install here, so the sparse file is written from a dense
model by the layout's definition, element by element (no reshapes shared with the
converter). The kernel offset order, as the V2 release's ``remap_checkpoint_keys``
reads it (``permute(2, 1, 0).reshape(out, in, k, k).transpose(3, 2)``), is
column-major: offset ``w * k + h`` holds the dense weight at row ``h``, column ``w``.
The weights are random and not symmetric, so a row-major reading would fail.
"""
from __future__ import annotations

import argparse

import pytest
import torch

from convnext_dense import ConvNeXt
from convnext_dense.checkpoint.convert import convert_checkpoint, convert_file
from convnext_dense.checkpoint.errors import CheckpointError
from tests.conftest import randomize_, run_tool_main

V2_SHAPE = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40), use_grn=True,
                layer_scale_init_value=0)


def sparse_kernel(weight: torch.Tensor) -> torch.Tensor:
    """A dense conv weight as a MinkowskiEngine kernel: (k*k, in, out), depthwise (k*k, C)."""
    out_channels, in_channels, size, _ = weight.shape
    depthwise = in_channels == 1 and out_channels > 1
    kernel = torch.empty((size * size, out_channels) if depthwise
                         else (size * size, in_channels, out_channels))
    for h in range(size):
        for w in range(size):
            for o in range(out_channels):
                if depthwise:
                    kernel[w * size + h, o] = weight[o, 0, h, w]
                else:
                    for i in range(in_channels):
                        kernel[w * size + h, i, o] = weight[o, i, h, w]
    return kernel


def fcmae_state(backbone: ConvNeXt, sparse_stem: bool = False) -> dict[str, torch.Tensor]:
    """The FCMAE release's file for ``backbone``'s weights, with a small decoder."""
    state: dict[str, torch.Tensor] = {}
    for key, value in backbone.state_dict().items():
        if key.startswith('norm'):
            continue  # the output norms are not part of the pre-trained encoder
        parts = key.split('.')
        is_conv = key.endswith('.weight') and value.dim() == 4
        stem = key.startswith('downsample_layers.0.')
        if is_conv and (not stem or sparse_stem):
            state[f'encoder.{key[:-len("weight")]}kernel'] = sparse_kernel(value)
            continue
        if stem:  # the release's stem is a dense Conv2d + channels-first LayerNorm
            state[f'encoder.{key}'] = value
            continue
        if key.startswith('downsample_layers.') and parts[2] == '0':  # MinkowskiLayerNorm
            key = '.'.join(parts[:3] + ['ln'] + parts[3:])
        elif parts[3] == 'norm':
            key = '.'.join(parts[:4] + ['ln'] + parts[4:])
        elif parts[3] in ('pwconv1', 'pwconv2'):  # MinkowskiLinear
            key = '.'.join(parts[:4] + ['linear'] + parts[4:])
        if key.endswith('.bias') and ('.dwconv.' in key or key.startswith('downsample_layers')):
            value = value.reshape(1, -1)  # sparse convolutions keep (1, C) biases
        if '.grn.' in key:
            value = value.reshape(1, -1)  # MinkowskiGRN: (1, C)
        state[f'encoder.{key}'] = value
    decoder_dim = 8
    state.update({'mask_token': torch.zeros(1, decoder_dim, 1, 1),
                  'proj.weight': torch.randn(decoder_dim, backbone.dims[-1], 1, 1),
                  'proj.bias': torch.zeros(decoder_dim),
                  'decoder.0.dwconv.weight': torch.randn(decoder_dim, 1, 7, 7),
                  'decoder.0.grn.gamma': torch.zeros(1, 1, 1, 4 * decoder_dim),
                  'pred.weight': torch.randn(32 * 32 * 3, decoder_dim, 1, 1),
                  'pred.bias': torch.zeros(32 * 32 * 3)})
    return state


@pytest.fixture(scope='module')
def backbone() -> ConvNeXt:
    return randomize_(ConvNeXt(**V2_SHAPE), seed=5).eval()


def assert_converts_back_exactly(converted: dict[str, torch.Tensor], backbone: ConvNeXt) -> None:
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith('norm')}
    assert converted.keys() == expected.keys()
    for key, value in expected.items():
        assert converted[key].shape == value.shape, key
        assert torch.equal(converted[key], value), key


@pytest.mark.parametrize('sparse_stem', [False, True])
def test_sparse_encoder_converts_back_exactly(backbone, sparse_stem):
    conversion = convert_checkpoint({'model': fcmae_state(backbone, sparse_stem)})
    assert conversion.src_format == 'fcmae'
    assert conversion.arch.use_grn and not conversion.arch.layer_scale
    assert_converts_back_exactly(conversion.state_dict, backbone)
    assert sorted(conversion.dropped) == ['decoder.0.dwconv.weight', 'decoder.0.grn.gamma',
                                          'mask_token', 'pred.bias', 'pred.weight',
                                          'proj.bias', 'proj.weight']


def test_the_kernel_order_is_not_symmetric(backbone):
    """A kernel read row-major would give other weights: the order is really tested."""
    weight = backbone.state_dict()['stages.0.0.dwconv.weight']
    assert not torch.equal(weight, weight.transpose(2, 3))


def test_cli_and_init_cfg(tmp_path, backbone):
    src = tmp_path / 'convnextv2_custom_1k_224_fcmae.pt'
    # as the release's main_pretrain.py saves it: its command line rides along as a Namespace
    torch.save({'model': fcmae_state(backbone), 'epoch': 799,
                'args': argparse.Namespace(model='convnextv2_custom', mask_ratio=0.6)}, src)
    dst = tmp_path / 'converted.pth'
    result = run_tool_main('convert_checkpoint', str(src), str(dst))
    assert result.returncode == 0, result.stderr
    assert 'format:    fcmae' in result.stdout and 'dropped:   7 tensors' in result.stdout
    loaded = ConvNeXt(**V2_SHAPE, init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    loaded.init_weights()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        loaded.eval()
        for name in ('norm0', 'norm1', 'norm2', 'norm3'):  # fresh in both: make them equal
            getattr(loaded, name).load_state_dict(getattr(backbone, name).state_dict())
        for a, b in zip(loaded(x), backbone(x)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_missing_encoder_stage_is_named(tmp_path, backbone):
    state = {k: v for k, v in fcmae_state(backbone).items()
             if not k.startswith(('encoder.stages.3.', 'encoder.downsample_layers.3.'))}
    src = tmp_path / 'cut_fcmae.pt'
    torch.save({'model': state}, src)
    with pytest.raises(CheckpointError, match=r'incomplete encoder: no blocks of stage 3 '
                                              r'\(encoder\.stages\.3\.\*\); no downsampling '
                                              r'layer of stage 3'):
        convert_file(src)


def test_bad_kernel_shape_is_named(backbone):
    state = fcmae_state(backbone)
    state['encoder.stages.0.0.dwconv.kernel'] = torch.zeros(48, 16)
    with pytest.raises(CheckpointError, match=r"'encoder.stages.0.0.dwconv.kernel': a kernel "
                                              r'of shape \(48, 16\)'):
        convert_checkpoint(state)
