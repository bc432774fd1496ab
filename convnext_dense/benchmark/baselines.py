"""What the benchmark measures: this package's ConvNeXt, timm's, mmpretrain's, and the official
release's design, built on request with the same architecture.

The official design (:class:`OfficialConvNeXt`) follows the paper's released detection
backbone (``object_detection/mmdet/models/backbones/convnext.py`` of
facebookresearch/ConvNeXt) end to end: NCHW-contiguous tensors throughout, its block and its
hand-written channels-first LayerNorm, its forward. It has this package's parameter names, so
the same state dict loads into both.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from timm.layers import DropPath, trunc_normal_
from torch import nn

from ..models.backbone import NUM_STAGES, ConvNeXt, resolve_arch
from .mmpretrain_env import MMPretrainStatus, activate_mmpretrain

IMPLS = ('ours', 'timm', 'official', 'mmpretrain')
OPTIONS = ('channels_last', 'with_cp', 'compile', 'amp', 'amp_bf16')
#: options measured only on a GPU (on a CPU, ``amp`` is already bf16)
GPU_ONLY_OPTIONS = ('amp_bf16',)
ARCH_ALIASES = {'T': 'tiny', 'S': 'small', 'B': 'base', 'L': 'large', 'XL': 'xlarge'}


# --------------------------------------------------------------------------------------------
# The official release's design, as the baseline
# --------------------------------------------------------------------------------------------
class OfficialLayerNorm(nn.Module):
    """The official release's channels-first LayerNorm: mean and variance by hand (NCHW)."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class OfficialBlock(nn.Module):
    """The official release's block: depthwise 7x7 ``nn.Conv2d`` on NCHW, permute to NHWC,
    LayerNorm, Linear, GELU, Linear, layer scale, permute back, drop-path residual.

    The release's channels-last LayerNorm is ``F.layer_norm`` over the last dimension, which is
    ``nn.LayerNorm`` (same parameters).
    """

    def __init__(self, dim: int, drop_path: float = 0.0,
                 layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (nn.Parameter(layer_scale_init_value * torch.ones(dim))
                      if layer_scale_init_value > 0 else None)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x)
        x = x.permute(0, 2, 3, 1)  # (N, C, H, W) -> (N, H, W, C)
        x = self.norm(x)
        x = self.pwconv1(x)
        x = self.act(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = self.gamma * x
        x = x.permute(0, 3, 1, 2)  # (N, H, W, C) -> (N, C, H, W)
        return shortcut + self.drop_path(x)


class OfficialConvNeXt(nn.Module):
    """The official release's detection backbone, with this package's arch names.

    As released: stem and downsampling layers with :class:`OfficialLayerNorm`, stages of
    :class:`OfficialBlock`, an :class:`OfficialLayerNorm` ``norm{i}`` on each returned stage,
    all stages run, NCHW throughout (no memory-format conversion anywhere). One difference:
    ``norm{i}`` exists only for ``out_indices`` (the release builds all four and leaves the
    others unused), so the state dict is exactly :class:`~convnext_dense.ConvNeXt`'s.
    """

    def __init__(self, arch: str | None = None, depths: Sequence[int] | None = None,
                 dims: Sequence[int] | None = None, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6) -> None:
        super().__init__()
        depths, dims = resolve_arch(arch, depths, dims)
        self.out_indices = tuple(out_indices)
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_channels, dims[0], kernel_size=4, stride=4),
            OfficialLayerNorm(dims[0], eps=1e-6)))
        for i in range(NUM_STAGES - 1):
            self.downsample_layers.append(nn.Sequential(
                OfficialLayerNorm(dims[i], eps=1e-6),
                nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2)))
        rates = torch.linspace(0, drop_path_rate, sum(depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i in range(NUM_STAGES):
            first = sum(depths[:i])
            self.stages.append(nn.Sequential(*[
                OfficialBlock(dims[i], drop_path=rates[first + j],
                              layer_scale_init_value=layer_scale_init_value)
                for j in range(depths[i])]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', OfficialLayerNorm(dims[i], eps=1e-6))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            nn.init.constant_(module.bias, 0)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The normalised features of ``out_indices``, as the release's ``forward_features``."""
        outs = []
        for i in range(NUM_STAGES):
            x = self.downsample_layers[i](x)
            x = self.stages[i](x)
            if i in self.out_indices:
                outs.append(getattr(self, f'norm{i}')(x))
        return tuple(outs)


def official_convnext(arch: str, **kwargs: Any) -> OfficialConvNeXt:
    """The official design of ``arch`` (``kwargs``: :class:`OfficialConvNeXt`'s)."""
    return OfficialConvNeXt(arch=arch, **kwargs)


# --------------------------------------------------------------------------------------------
# mmpretrain: installed, from the overlay, not installed, or installed and broken
# --------------------------------------------------------------------------------------------
def mmpretrain_status(overlay: str | Path | None = None,
                      use_overlay: bool = True) -> MMPretrainStatus:
    """Make mmpretrain's ConvNeXt importable for ``build_backbone(Variant('mmpretrain'))``,
    as installed or from the overlay (:func:`~.mmpretrain_env.activate_mmpretrain`: with the
    overlay this changes the process for good), and say how (``mmpretrain 1.2.0 (overlay
    PATH)``) or why it cannot be used: not installed (no ``mmpretrain`` module at all, no
    overlay), installed but failing to import (any other error, a missing dependency
    included), transformers already imported."""
    return activate_mmpretrain(overlay, use_overlay)


# --------------------------------------------------------------------------------------------
# Building what is measured
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One implementation with options: ``ours``, ``timm``, ``official`` or ``mmpretrain``."""

    impl: str
    options: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return '+'.join((self.impl, *self.options))


class _TupleOutputs(nn.Module):
    """Wrap a model whose forward returns a list, so every variant returns a tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


def build_backbone(variant: Variant, arch: str) -> nn.Module:
    """Build the backbone of a variant, all four stage outputs, random weights, train mode.

    The official design takes no options: it runs as released.
    """
    unknown = set(variant.options) - set(OPTIONS)
    if unknown:
        raise ValueError(f'options must be among {", ".join(OPTIONS)}, got {sorted(unknown)}')
    with_cp = 'with_cp' in variant.options
    if variant.impl == 'ours':
        model: nn.Module = ConvNeXt(arch=arch, out_indices=(0, 1, 2, 3), with_cp=with_cp)
    elif variant.impl == 'official':
        if variant.options:
            raise ValueError(f'the official design runs as released, without options; got '
                             f'{variant.name!r}')
        model = official_convnext(arch, out_indices=(0, 1, 2, 3))
    elif variant.impl == 'timm':
        import timm
        model = _TupleOutputs(timm.create_model(f'convnext_{arch}', pretrained=False,
                                                features_only=True))
        if with_cp:
            model.model.set_grad_checkpointing(True)
    elif variant.impl == 'mmpretrain':
        from mmpretrain.models import ConvNeXt as MMPretrainConvNeXt
        model = _TupleOutputs(MMPretrainConvNeXt(arch=arch, out_indices=(0, 1, 2, 3),
                                                 gap_before_final_norm=False, with_cp=with_cp))
    else:
        raise ValueError(f'impl must be one of {", ".join(IMPLS)}, got {variant.impl!r}')
    if 'channels_last' in variant.options:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_input(batch: int, size: tuple[int, int], variant: Variant,
               device: torch.device) -> torch.Tensor:
    """A random image batch in the variant's memory format (NCHW-contiguous by default)."""
    x = torch.randn(batch, 3, *size, device=device)
    if 'channels_last' in variant.options:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
