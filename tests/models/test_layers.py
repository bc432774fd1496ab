"""ConvNeXt layers: the depthwise convolution's CPU backward and the block's fast paths
give the results of the plain PyTorch modules (fp32 tolerance)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convnext_dense.models.layers import ConvNeXtBlock, DepthwiseConv2d, DilatedDownsampleConv2d
from tests.conftest import randomize_, relative_error

FORMATS = [torch.contiguous_format, torch.channels_last]


def reference_block_forward(block: ConvNeXtBlock, x: torch.Tensor) -> torch.Tensor:
    """The official release's block forward (no drop path)."""
    y = block.dwconv(x).permute(0, 2, 3, 1)
    y = block.pwconv2(block.act(block.pwconv1(block.norm(y))))
    if block.gamma is not None:
        y = block.gamma * y
    return x + y.permute(0, 3, 1, 2)


@pytest.mark.parametrize('dilation', [1, 2, 4])
@pytest.mark.parametrize('memory_format', FORMATS)
@pytest.mark.parametrize('shape', [(3, 8, 9, 7), (1, 16, 32, 33), (2, 4, 2, 3)])
def test_depthwise_conv_gradients_equal_conv2d(shape, memory_format, dilation):
    torch.manual_seed(0)
    conv = DepthwiseConv2d(shape[1], dilation=dilation)
    reference = nn.Conv2d(shape[1], shape[1], 7, padding=3 * dilation, dilation=dilation,
                          groups=shape[1])
    reference.load_state_dict(conv.state_dict())
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    grad = torch.randn(shape)
    results = []
    for module in (conv, reference):
        inp = x.clone().requires_grad_()
        out = module(inp)
        out.backward(grad)
        results.append((out, inp.grad, module.weight.grad, module.bias.grad))
    for actual, expected in zip(*results):
        assert relative_error(actual, expected) < 1e-5


@pytest.mark.parametrize('dilation', [1, 2])
def test_depthwise_conv_gradcheck(dilation):
    conv = DepthwiseConv2d(3, kernel_size=5, dilation=dilation).double()
    x = torch.randn(2, 3, 6, 5, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(conv, (x,))


@pytest.mark.parametrize('dilation', [1, 2])
def test_dilated_downsample_conv_keeps_what_the_stride_2_conv_computes(dilation):
    """On the stride-2 layer's input spread out by ``dilation``, the output at every
    ``2 * dilation``-th position is the stride-2 output; the size is kept."""
    torch.manual_seed(0)
    strided = nn.Conv2d(6, 10, kernel_size=2, stride=2)
    dilated = DilatedDownsampleConv2d(6, 10, dilation=dilation)
    assert dilated.state_dict().keys() == strided.state_dict().keys()
    dilated.load_state_dict(strided.state_dict())
    x = torch.randn(2, 6, 8, 12)
    spread = torch.randn(2, 6, 8 * dilation, 12 * dilation)  # other positions: anything
    spread[..., ::dilation, ::dilation] = x
    with torch.no_grad():
        out = dilated(spread)
        assert out.shape == (2, 10, 8 * dilation, 12 * dilation)
        step = 2 * dilation
        torch.testing.assert_close(out[..., ::step, ::step], strided(x), rtol=1e-5, atol=1e-6)


def test_depthwise_conv_keeps_conv2d_keys_and_rejects_even_kernels():
    assert set(DepthwiseConv2d(4).state_dict()) == {'weight', 'bias'}
    with pytest.raises(ValueError, match='kernel_size must be odd, got 4'):
        DepthwiseConv2d(4, kernel_size=4)


def test_depthwise_conv_under_bf16_autocast():
    conv = DepthwiseConv2d(8)
    x = torch.randn(2, 8, 16, 16, requires_grad=True)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = conv(x)
    out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    assert x.grad.dtype == conv.weight.grad.dtype == torch.float32
    assert torch.isfinite(conv.weight.grad).all()


@pytest.mark.parametrize('memory_format', FORMATS)
@pytest.mark.parametrize('layer_scale', [1.0, 0.0])
@pytest.mark.parametrize('size', [2, 12])  # few pixels / many pixels per channel
def test_block_paths_equal_the_official_forward(size, layer_scale, memory_format):
    torch.manual_seed(0)
    block = randomize_(ConvNeXtBlock(16, layer_scale_init_value=layer_scale)).eval()
    x = torch.randn(2, 16, size, size).contiguous(memory_format=memory_format)
    expected = reference_block_forward(block, x)
    with torch.no_grad():  # the fused oneDNN inference kernels
        assert relative_error(block(x), expected) < 1e-5
    xg = x.clone().requires_grad_()
    actual = block(xg)  # the autograd path
    assert relative_error(actual, expected) < 1e-5
    actual.backward(torch.ones_like(actual))
    xr = x.clone().requires_grad_()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    reference_block_forward(block, xr).backward(torch.ones_like(actual))
    assert relative_error(xg.grad, xr.grad) < 1e-5
    for grad, param in zip(grads, block.parameters()):
        assert relative_error(grad, param.grad) < 1e-5


def test_tracing_sees_plain_linears():
    """FLOP counters and ONNX export trace the block: no fused oneDNN ops in the graph."""
    block = ConvNeXtBlock(8, layer_scale_init_value=1.0).eval()
    with torch.no_grad():
        graph = str(torch.jit.trace(block, torch.randn(1, 8, 16, 16)).inlined_graph)
    assert 'aten::linear' in graph and '_linear_pointwise' not in graph
