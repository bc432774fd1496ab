"""Multi-scale deformable attention with standard ONNX operators (no custom domain, no plugin).

mmcv's ``MultiScaleDeformableAttention`` samples each level of the value map at fractional
points with ``grid_sample`` (bilinear, ``align_corners=False``, zero padding) on the CPU and
with its own CUDA kernel on a GPU; mmdeploy exports it as a custom op that plain ONNX Runtime
does not have. :func:`multi_scale_deformable_attn_gather` computes the same sum with a
gather-based bilinear sampler: for each sampling point, the four neighbouring pixels of its
level are read from the flattened value map by index (ONNX ``Gather``) and weighted by the
bilinear weights, zero for a neighbour outside the map. All levels are read in one gather per
corner, so the graph keeps the levels' sizes dynamic. (ONNX ``GridSample`` would be shorter,
but TensorRT mis-compiles it; the gather form runs everywhere.)

:func:`gather_sampler` makes mmcv's module use it while a graph is traced.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

#: the four neighbours of a sampling point: (dx, dy) from its floor
CORNERS = ((0, 0), (1, 0), (0, 1), (1, 1))


def multi_scale_deformable_attn_gather(value: torch.Tensor, value_spatial_shapes: torch.Tensor,
                                       sampling_locations: torch.Tensor,
                                       attention_weights: torch.Tensor) -> torch.Tensor:
    """mmcv's ``multi_scale_deformable_attn_pytorch``, with gathers in place of ``grid_sample``.

    Args:
        value: (bs, num_keys, num_heads, head_dims), the levels' maps flattened row by row
            one after another.
        value_spatial_shapes: (num_levels, 2) int64, each level's (height, width).
        sampling_locations: (bs, num_queries, num_heads, num_levels, num_points, 2), (x, y)
            normalized to [0, 1] on the level (points outside read zeros).
        attention_weights: (bs, num_queries, num_heads, num_levels, num_points).

    Returns:
        (bs, num_queries, num_heads * head_dims).
    """
    bs, num_keys, num_heads, head_dims = value.shape
    num_queries = sampling_locations.shape[1]
    heights = value_spatial_shapes[:, 0].reshape(-1, 1)  # (num_levels, 1): broadcast on points
    widths = value_spatial_shapes[:, 1].reshape(-1, 1)
    starts = torch.cat([heights.new_zeros((1, 1)), (heights * widths).cumsum(0)[:-1]])
    # pixel coordinates of align_corners=False: the centre of pixel i is at i + 0.5
    x = sampling_locations[..., 0] * widths.to(value.dtype) - 0.5
    y = sampling_locations[..., 1] * heights.to(value.dtype) - 0.5
    x0, y0 = x.floor(), y.floor()
    fx, fy = x - x0, y - y0
    x0, y0 = x0.long(), y0.long()
    # the row of (image, head, key) in the flattened value
    flat = value.permute(0, 2, 1, 3).reshape(bs * num_heads * num_keys, head_dims)
    image_head = (torch.arange(bs, device=value.device)[:, None] * num_heads
                  + torch.arange(num_heads, device=value.device)[None])
    base = (image_head * num_keys).reshape(bs, 1, num_heads, 1, 1)
    output = value.new_zeros((bs, num_queries, num_heads, head_dims))
    for dx, dy in CORNERS:
        xi, yi = x0 + dx, y0 + dy
        weight = (fx if dx else 1 - fx) * (fy if dy else 1 - fy) * attention_weights
        inside = (xi >= 0) & (xi < widths) & (yi >= 0) & (yi < heights)
        weight = torch.where(inside, weight, torch.zeros_like(weight))
        index = torch.where(inside, base + starts + yi * widths + xi, torch.zeros_like(xi))
        sampled = flat[index.reshape(-1)].reshape(index.shape + (head_dims,))
        output = output + (sampled * weight[..., None]).sum(dim=(3, 4))
    return output.reshape(bs, num_queries, num_heads * head_dims)


@contextlib.contextmanager
def gather_sampler() -> Iterator[None]:
    """Within the block, mmcv's ``MultiScaleDeformableAttention`` (CPU path) samples with
    :func:`multi_scale_deformable_attn_gather` (a patch of the module's name
    ``multi_scale_deformable_attn_pytorch`` in ``mmcv.ops.multi_scale_deform_attn``, undone on
    exit). Its inputs must be on the CPU (on a GPU, mmcv runs its CUDA kernel)."""
    from mmcv.ops import multi_scale_deform_attn as module
    original = module.multi_scale_deformable_attn_pytorch
    module.multi_scale_deformable_attn_pytorch = multi_scale_deformable_attn_gather
    try:
        yield
    finally:
        module.multi_scale_deformable_attn_pytorch = original
