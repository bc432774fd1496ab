"""Building blocks of ConvNeXt: channels-first LayerNorm, GRN and the block itself.

Parameter names follow the paper's official release (``dwconv``, ``norm``,
``pwconv1``, ``pwconv2``, ``gamma``; ConvNeXt V2's ``grn.gamma``/``grn.beta``),
so official checkpoints load without renaming.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.layers import DropPath
from torch import nn


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dimension of an NCHW tensor.

    The official release computes mean and variance by hand with several
    element-wise ops. This permutes to NHWC (a free view for channels_last
    tensors) and calls PyTorch's fused ``layer_norm`` kernel instead.
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GlobalResponseNorm(nn.Module):
    """ConvNeXt V2 Global Response Normalization on NHWC tensors.

    Parameters are named and shaped as in the official V2 release:
    ``gamma`` and ``beta`` of shape ``(1, 1, 1, C)``.
    """

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, dim))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        global_norm = x.norm(p=2, dim=(1, 2), keepdim=True)
        normalized = global_norm / (global_norm.mean(dim=-1, keepdim=True) + self.eps)
        return x + torch.addcmul(self.beta, self.gamma, x * normalized)


class ConvNeXtBlock(nn.Module):
    """One ConvNeXt block: 7x7 depthwise conv, LayerNorm, inverted-bottleneck MLP.

    Args:
        dim: Number of input and output channels.
        drop_path: Stochastic-depth probability of this block.
        layer_scale_init_value: Initial value of the per-channel layer scale
            ``gamma``; 0 disables layer scale (no ``gamma`` parameter).
        use_grn: Insert ConvNeXt V2 Global Response Normalization after the
            MLP activation.
        mlp_ratio: Hidden width of the MLP relative to ``dim``.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.act = nn.GELU()
        self.grn = GlobalResponseNorm(mlp_ratio * dim) if use_grn else None
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        if layer_scale_init_value > 0:
            self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init_value)))
        else:
            self.gamma = None
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.act(self.pwconv1(self.norm(x)))
        if self.grn is not None:
            x = self.grn(x)
        x = self.pwconv2(x)
        if self.gamma is not None:
            x = x * self.gamma
        return shortcut + self.drop_path(x.permute(0, 3, 1, 2))
