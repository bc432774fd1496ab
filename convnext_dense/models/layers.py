"""Building blocks of ConvNeXt: channels-first LayerNorm, GRN and the block itself.

Parameter names follow the paper's official release (``dwconv``, ``norm``,
``pwconv1``, ``pwconv2``, ``gamma``; ConvNeXt V2's ``grn.gamma``/``grn.beta``),
so official checkpoints load without renaming.
"""
from __future__ import annotations

from typing import Any

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


class _DepthwiseConv2dFunction(torch.autograd.Function):
    """Stride-1 'same' (optionally dilated) depthwise convolution with a faster CPU backward.

    oneDNN's depthwise backward-weights kernel is 3-40x slower than the forward
    on CPU (worst on small maps such as the 7x7 of stage 3). Here the input
    gradient is a forward convolution with the flipped kernel and the weight
    gradient is, per sample, a depthwise convolution of the (zero-padded) input with
    the output gradient as kernel (strided by the dilation): both run on oneDNN's fast
    forward path.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type='cpu')
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                padding: int, dilation: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.dilation = padding, dilation
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, 1, padding, dilation, x.shape[1])

    @staticmethod
    @torch.amp.custom_bwd(device_type='cpu')
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        pad, dilation, channels = ctx.padding, ctx.dilation, x.shape[1]
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = F.conv2d(grad, weight.flip(2, 3), None, 1, pad, dilation,
                              channels).to(x.dtype)
        if ctx.needs_input_grad[1]:
            # oneDNN is fastest on NCHW here; the output is (1, C, k, k) per sample
            x_nchw, grad_nchw = x.contiguous(), grad.contiguous()
            grad_weight = torch.zeros_like(weight)
            for n in range(x.shape[0]):
                grad_weight += F.conv2d(x_nchw[n:n + 1], grad_nchw[n].unsqueeze(1),
                                        stride=dilation, padding=pad,
                                        groups=channels).view_as(weight)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad.sum((0, 2, 3), dtype=weight.dtype)
        return grad_x, grad_weight, grad_bias, None, None


class DepthwiseConv2d(nn.Conv2d):
    """Depthwise ``k x k`` convolution (stride 1, 'same' padding) of a ConvNeXt block.

    A plain ``nn.Conv2d`` (same parameters and state-dict keys) whose CPU
    backward avoids oneDNN's slow depthwise weight-gradient kernel; on other
    devices, and without gradients, it is ``nn.Conv2d.forward``.

    Args:
        channels: Input and output channels (one filter per channel).
        kernel_size: Odd kernel size.
        dilation: Spacing of the kernel's taps (a dilated backbone's later stages); the
            padding grows with it, so the output keeps the input's size.
    """

    def __init__(self, channels: int, kernel_size: int = 7, dilation: int = 1) -> None:
        if kernel_size % 2 != 1:
            raise ValueError(f'kernel_size must be odd, got {kernel_size}')
        super().__init__(channels, channels, kernel_size, padding=dilation * (kernel_size // 2),
                         dilation=dilation, groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != 'cpu' or not torch.is_grad_enabled() or not (
                x.requires_grad or self.weight.requires_grad):
            return super().forward(x)
        return _DepthwiseConv2dFunction.apply(x, self.weight, self.bias, self.padding[0],
                                              self.dilation[0])


class DilatedDownsampleConv2d(nn.Conv2d):
    """A stage's 2x2 downsampling convolution turned into a resolution-keeping one.

    For a dilated backbone (``output_stride`` 16 or 8): the same parameters and state-dict
    keys as the ``kernel_size=2, stride=2`` convolution it replaces, applied at stride 1
    with ``dilation`` and ``dilation`` zeros of padding on the right and bottom only, so
    the output keeps the input's size: ``y[j] = sum_a w[a] * x[j + dilation * a]``. The
    weights still do what they did: where the input is the stride-2 layer's input spread
    out by ``dilation`` (its values at every ``dilation``-th position), the output at every
    ``2 * dilation``-th position is the stride-2 layer's output.

    Args:
        in_channels: Input channels.
        out_channels: Output channels.
        dilation: The dilation of the stage before it (1 for the first dilated stage).
    """

    def __init__(self, in_channels: int, out_channels: int, dilation: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=1, dilation=dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.dilation[0] * (self.kernel_size[0] - 1)
        return super().forward(F.pad(x, (0, pad, 0, pad)))


def _find_linear_pointwise() -> Any:
    try:
        return torch.ops.mkldnn._linear_pointwise if torch.backends.mkldnn.is_available() else None
    except (AttributeError, RuntimeError):
        return None


#: oneDNN's linear with a fused element-wise op (``gelu``) or ``binary`` (``add``) post-op,
#: what inductor's CPU backend uses; None where this torch build lacks it.
_LINEAR_POINTWISE = _find_linear_pointwise()


def _fused_inference(x: torch.Tensor) -> bool:
    """Whether the block's MLP can run as fused oneDNN kernels: CPU, fp32, no autograd,
    eager. Not under ``torch.compile``/``torch.export`` (inductor fuses by itself) nor under
    ``torch.jit`` tracing (FLOP counters, ONNX export), which should see plain linears."""
    return (_LINEAR_POINTWISE is not None and not torch.is_grad_enabled()
            and x.device.type == 'cpu' and x.dtype == torch.float32
            and not torch.is_autocast_enabled('cpu') and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing())


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
        dilation: Dilation of the 7x7 depthwise convolution (a dilated backbone's later
            stages); parameters and keys are unchanged.
    """

    def __init__(self, dim: int, drop_path: float = 0.0, layer_scale_init_value: float = 1e-6,
                 use_grn: bool = False, mlp_ratio: int = 4, dilation: int = 1) -> None:
        super().__init__()
        self.dwconv = DepthwiseConv2d(dim, kernel_size=7, dilation=dilation)
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
        """NCHW in, NCHW out; fastest for channels_last inputs, where every permute is free."""
        shortcut = x.permute(0, 2, 3, 1)
        x = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        no_drop_path = isinstance(self.drop_path, nn.Identity) or not self.training
        if no_drop_path and self.grn is None and _fused_inference(x):
            return self._fused_inference_mlp(x, shortcut).permute(0, 3, 1, 2)
        x = self.act(self.pwconv1(x))
        if self.grn is not None:
            x = self.grn(x)
        x = self.pwconv2(x)
        if no_drop_path:
            # shortcut + gamma * x in one pass
            x = shortcut + x if self.gamma is None else torch.addcmul(shortcut, x, self.gamma)
        else:
            x = shortcut + self.drop_path(x if self.gamma is None else x * self.gamma)
        return x.permute(0, 3, 1, 2)

    def _fused_inference_mlp(self, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
        """``shortcut + gamma * pwconv2(gelu(pwconv1(x)))`` as two oneDNN kernels (NHWC)."""
        x = _LINEAR_POINTWISE(x, self.pwconv1.weight, self.pwconv1.bias, 'gelu', [], 'none')
        weight, bias = self.pwconv2.weight, self.pwconv2.bias
        if self.gamma is not None:
            if x[..., 0].numel() <= weight.shape[1]:  # few pixels: scaling the output is cheaper
                x = F.linear(x, weight, bias)
                return torch.addcmul(shortcut, x, self.gamma)
            weight, bias = weight * self.gamma[:, None], bias * self.gamma
        return _LINEAR_POINTWISE.binary(x, shortcut.contiguous(), weight, bias, 'add')
