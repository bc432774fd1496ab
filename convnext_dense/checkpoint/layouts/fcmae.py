"""ConvNeXt V2 FCMAE pre-training checkpoints (the V2 release's ``*_fcmae.pt``).

The sparse encoder sits under ``encoder.`` in MinkowskiEngine layouts; the
decoder (``decoder.*``, ``mask_token``, ``proj.*``, ``pred.*``) is dropped.

* Convolutions store a ``kernel`` instead of a ``weight``: ``(k*k, in, out)`` for
  the downsampling convs (and a sparse stem, where a file has one; the release's
  stem is a dense ``Conv2d``), ``(k*k, C)`` for the depthwise convs. The kernel
  offset index is column-major, as the release's own ``remap_checkpoint_keys``
  reads it: ``weight[o, i, h, w] = kernel[w * k + h, i, o]`` and
  ``weight[c, 0, h, w] = kernel[w * k + h, c]``.
* LayerNorm and Linear are wrapped: ``...norm.ln.weight``, ``...pwconv1.linear.weight``.
* Biases of sparse layers are ``(1, C)``; GRN ``gamma``/``beta`` are ``(1, C)``.
"""
from __future__ import annotations

import math
import re

import torch

from ..errors import CheckpointError
from .common import StateDict, convert_keys, has_key

_ENCODER = 'encoder.'
_WRAPPER = re.compile(r'\.(ln|linear)\.')


def dense_kernel(kernel: torch.Tensor, key: str) -> torch.Tensor:
    """A MinkowskiEngine kernel as a dense ``Conv2d`` weight (see the module docstring)."""
    size = math.isqrt(kernel.shape[0])
    if kernel.dim() not in (2, 3) or size * size != kernel.shape[0]:
        raise CheckpointError(f'FCMAE key {key!r}: a kernel of shape {tuple(kernel.shape)}; '
                              'expected (k*k, in, out) or, depthwise, (k*k, channels)')
    if kernel.dim() == 3:
        _, in_channels, out_channels = kernel.shape
        return kernel.permute(2, 1, 0).reshape(out_channels, in_channels, size, size) \
            .transpose(2, 3).contiguous()
    channels = kernel.shape[1]
    return kernel.t().reshape(channels, 1, size, size).transpose(2, 3).contiguous()


def _check_complete(encoder_keys: list[str]) -> None:
    problems = []
    for stage in range(4):
        if not any(k.startswith(f'stages.{stage}.') for k in encoder_keys):
            problems.append(f'no blocks of stage {stage} ({_ENCODER}stages.{stage}.*)')
        if not any(k.startswith(f'downsample_layers.{stage}.') for k in encoder_keys):
            problems.append(f'no {"stem" if stage == 0 else "downsampling layer"} of stage '
                            f'{stage} ({_ENCODER}downsample_layers.{stage}.*)')
    if problems:
        raise CheckpointError('FCMAE checkpoint with an incomplete encoder: '
                              + '; '.join(problems))


def fcmae_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """The FCMAE encoder in the official (dense ConvNeXt V2) layout; the decoder dropped."""
    encoder: StateDict = {}
    for key, value in state_dict.items():
        if not key.startswith(_ENCODER):
            continue
        name = _WRAPPER.sub('.', key[len(_ENCODER):])
        if name.endswith('.kernel'):
            name, value = name[:-len('kernel')] + 'weight', dense_kernel(value, key)
        encoder[name] = value
    _check_complete(list(encoder))
    converted, _ = convert_keys(encoder, 'FCMAE encoder', lambda k: k, lambda k: False)
    return converted, [k for k in state_dict if not k.startswith(_ENCODER)]


def is_fcmae(keys: list[str]) -> bool:
    return has_key(keys, r'^encoder\..*\.kernel$')
