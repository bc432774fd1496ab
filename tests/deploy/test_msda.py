"""The gather-based deformable attention against mmcv's, in PyTorch and in ONNX Runtime."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch
from torch import nn

from convnext_dense.deploy.msda import gather_sampler, multi_scale_deformable_attn_gather

#: (height, width) of each level: odd, one-pixel and wide maps
SHAPES = [(7, 9), (4, 5), (1, 3), (2, 1)]


def random_inputs(shapes, bs=2, queries=11, heads=3, dims=4, points=5, spread=0.4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    keys = sum(h * w for h, w in shapes)
    value = torch.randn(bs, keys, heads, dims, generator=generator)
    # points in [-spread, 1 + spread]: a share of them outside the map, some far outside
    locations = torch.rand(bs, queries, heads, len(shapes), points, 2, generator=generator)
    locations = locations * (1 + 2 * spread) - spread
    weights = torch.rand(bs, queries, heads, len(shapes), points, generator=generator)
    return value, torch.tensor(shapes, dtype=torch.long), locations, weights


@pytest.mark.parametrize('shapes', [SHAPES, [(16, 12)], [(3, 3), (1, 1)]])
def test_gather_sampler_equals_mmcvs(shapes):
    value, spatial_shapes, locations, weights = random_inputs(shapes)
    outside = ((locations < 0) | (locations > 1)).any(-1)
    assert 0.2 < outside.float().mean() < 0.8
    expected = multi_scale_deformable_attn_pytorch(value, spatial_shapes, locations, weights)
    actual = multi_scale_deformable_attn_gather(value, spatial_shapes, locations, weights)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def test_gather_sampler_on_pixel_centres_and_edges():
    """Points on pixel centres read the pixel; half a pixel outside the map, half of it."""
    value, spatial_shapes, _, _ = random_inputs([(3, 4)], bs=1, heads=1, dims=1)
    grid = value[0, :, 0, 0].reshape(3, 4)
    points = torch.tensor([[(0.5 + 2) / 4, (0.5 + 1) / 3], [0.0, 0.5 / 3],
                           [1.0, 1.0], [1.2, 0.5]])
    locations = points.reshape(1, 4, 1, 1, 1, 2)
    weights = torch.ones(1, 4, 1, 1, 1)
    out = multi_scale_deformable_attn_gather(value, spatial_shapes, locations, weights)[0, :, 0]
    expected = torch.stack([grid[1, 2], grid[0, 0] / 2, grid[2, 3] / 4, torch.tensor(0.0)])
    torch.testing.assert_close(out, expected)


class _Attention(nn.Module):
    """mmcv's module on given value maps, its sampling from the queries' reference points."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = MultiScaleDeformableAttention(embed_dims=16, num_heads=2, num_levels=2,
                                                  num_points=3, batch_first=True)
        torch.nn.init.normal_(self.attn.sampling_offsets.weight, std=2.0)
        torch.nn.init.normal_(self.attn.attention_weights.weight)

    def forward(self, query: torch.Tensor, reference: torch.Tensor, fine: torch.Tensor,
                coarse: torch.Tensor) -> torch.Tensor:
        shapes = torch.stack([torch._shape_as_tensor(fine)[2:],
                              torch._shape_as_tensor(coarse)[2:]])
        value = torch.cat([fine.flatten(2), coarse.flatten(2)], 2).transpose(1, 2)
        starts = torch.cat([shapes.new_zeros(1), shapes.prod(1).cumsum(0)[:-1]])
        return self.attn(query, value=value, reference_points=reference,
                         spatial_shapes=shapes, level_start_index=starts)


def test_module_exports_with_standard_ops_and_dynamic_sizes(tmp_path):
    """mmcv's module under :func:`gather_sampler` exports with ONNX's own operators only (no
    GridSample) and ONNX Runtime matches mmcv at other map sizes than traced."""
    torch.manual_seed(0)
    module = _Attention().eval()

    def inputs(bs, queries, size):
        return (torch.randn(bs, queries, 16), torch.rand(bs, queries, 2, 2) * 1.4 - 0.2,
                torch.randn(bs, 16, *size), torch.randn(bs, 16, size[0] // 2, size[1] // 2))

    path = tmp_path / 'msda.onnx'
    names = ['query', 'reference', 'fine', 'coarse']
    with torch.no_grad(), gather_sampler():
        torch.onnx.export(module, inputs(1, 5, (8, 6)), str(path), dynamo=False,
                          opset_version=17, input_names=names, output_names=['out'],
                          dynamic_axes={'query': {0: 'b', 1: 'q'}, 'reference': {0: 'b', 1: 'q'},
                                        'fine': {0: 'b', 2: 'h', 3: 'w'},
                                        'coarse': {0: 'b', 2: 'h2', 3: 'w2'}})
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {''}
    assert 'GridSample' not in {node.op_type for node in graph.node}
    session = ort.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    for bs, queries, size in [(2, 7, (10, 14)), (1, 3, (4, 4))]:
        feed = inputs(bs, queries, size)
        with torch.no_grad():
            expected = module(*feed)  # mmcv's grid_sample path
        actual = session.run(None, {n: t.numpy() for n, t in zip(names, feed)})[0]
        torch.testing.assert_close(torch.from_numpy(actual), expected, rtol=1e-4, atol=1e-5)
    from mmcv.ops import multi_scale_deform_attn
    assert multi_scale_deform_attn.multi_scale_deformable_attn_pytorch is (
        multi_scale_deformable_attn_pytorch)
