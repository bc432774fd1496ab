"""Export-friendly operations against the PyTorch and mmcv operations they stand for."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from mmcv.ops import batched_nms
from torch import nn

from convnext_dense.deploy.detection import _batched_nms_top_k
from convnext_dense.deploy.ops import ExportableAdaptiveAvgPool2d, exportable_copy


@pytest.mark.parametrize('height, width', [(7, 9), (16, 20), (3, 5), (1, 2), (6, 6)])
@pytest.mark.parametrize('bins', [1, 2, 3, 6])
def test_adaptive_pool_equals_pytorchs(height, width, bins):
    x = torch.randn(2, 4, height, width)
    expected = F.adaptive_avg_pool2d(x, bins)
    torch.testing.assert_close(ExportableAdaptiveAvgPool2d(bins)(x), expected,
                               rtol=1e-5, atol=1e-6)


def test_exportable_copy_replaces_pooling_and_leaves_the_model():
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Sequential(nn.AdaptiveAvgPool2d(3)))
    copy = exportable_copy(model)
    assert isinstance(copy[0], nn.AdaptiveAvgPool2d)  # GlobalAveragePool in ONNX
    assert isinstance(copy[1][0], ExportableAdaptiveAvgPool2d) and copy[1][0].bins == (3, 3)
    assert isinstance(model[1][0], nn.AdaptiveAvgPool2d)


def random_boxes(generator: torch.Generator, count: int) -> torch.Tensor:
    xy = torch.rand(count, 2, generator=generator) * 100
    wh = torch.rand(count, 2, generator=generator) * 40 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_batched_nms_top_k_keeps_what_mmcv_keeps():
    generator = torch.Generator().manual_seed(0)
    boxes = torch.stack([random_boxes(generator, 300) for _ in range(2)])
    scores = torch.rand(2, 300, generator=generator)
    scores[1, :40] = -1.0  # padding entries never survive
    groups = torch.randint(0, 3, (2, 300), generator=generator)
    kept_scores, index = _batched_nms_top_k(boxes, scores, groups, 0.5, 0.05, 100)
    for image in range(2):
        valid = scores[image] > 0.05
        candidates = valid.nonzero()[:, 0]
        _, keep = batched_nms(boxes[image, candidates], scores[image, candidates],
                              groups[image, candidates], dict(type='nms', iou_threshold=0.5))
        expected = candidates[keep][:100]
        found = index[image][kept_scores[image] > 0]
        assert found.tolist() == expected.tolist()
        torch.testing.assert_close(kept_scores[image][:len(found)], scores[image, expected])
