"""Operations written so that ``torch.onnx.export(..., dynamo=False)`` keeps shapes dynamic.

The TorchScript-based exporter cannot export ``adaptive_avg_pool2d`` to an output size other
than 1 unless the input size is known (``Unsupported: ONNX export of operator
adaptive_avg_pool2d, input size not accessible``): UperNet's pyramid pooling module uses bins
1, 2, 3 and 6. :class:`ExportableAdaptiveAvgPool2d` computes the same average with two
averaging matrices built from the input's shape, so the graph accepts any input size.

:class:`OnnxNonMaxSuppression` is ONNX's ``NonMaxSuppression`` (batched, per class), with
torchvision's NMS as its eager implementation: the detectors' graphs run the same in PyTorch
and in ONNX Runtime.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torchvision.ops import nms


def adaptive_pool_matrix(size: torch.Tensor | int, bins: int) -> torch.Tensor:
    """The (bins, size) matrix whose rows average PyTorch's adaptive pooling windows.

    Window ``i`` covers ``[floor(i * size / bins), ceil((i + 1) * size / bins))``, exactly
    as ``torch.nn.functional.adaptive_avg_pool2d`` does.
    """
    size = torch.as_tensor(size)
    index = torch.arange(bins, device=size.device)
    start = torch.div(index * size, bins, rounding_mode='floor')
    end = torch.div((index + 1) * size + bins - 1, bins, rounding_mode='floor')
    position = torch.arange(size, device=size.device)
    inside = (position[None] >= start[:, None]) & (position[None] < end[:, None])
    return inside.float() / (end - start)[:, None].float()


class ExportableAdaptiveAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(bins)`` as two matrix products over dynamic H and W."""

    def __init__(self, bins: int | tuple[int, int]) -> None:
        super().__init__()
        self.bins = (bins, bins) if isinstance(bins, int) else tuple(bins)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        rows = adaptive_pool_matrix(torch.as_tensor(height), self.bins[0]).to(x.dtype)
        cols = adaptive_pool_matrix(torch.as_tensor(width), self.bins[1]).to(x.dtype)
        return torch.matmul(torch.matmul(rows, x), cols.transpose(0, 1))


def exportable_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` in eval mode with every adaptive pooling made exportable.

    ``AdaptiveAvgPool2d`` to 1x1 stays (ONNX's GlobalAveragePool); the others are replaced by
    :class:`ExportableAdaptiveAvgPool2d`. The caller's model is not changed.
    """
    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size not in (1, (1, 1)):
                setattr(parent, name, ExportableAdaptiveAvgPool2d(child.output_size))
    return model


class OnnxNonMaxSuppression(torch.autograd.Function):
    """ONNX ``NonMaxSuppression``: (B, S, 4) boxes, (B, C, S) scores -> (K, 3) indices.

    Each row of the output is ``(batch, class, box)`` for a kept box, best first within each
    (batch, class); boxes with a score ``<= score_threshold`` are dropped, and a box is
    suppressed by a better one whose IoU with it is ``> iou_threshold`` (as mmcv's ``nms``).
    """

    @staticmethod
    def forward(ctx: Any, boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                score_threshold: float) -> torch.Tensor:
        selected = []
        for batch in range(scores.shape[0]):
            for cls in range(scores.shape[1]):
                candidates = torch.nonzero(scores[batch, cls] > score_threshold)[:, 0]
                keep = candidates[nms(boxes[batch, candidates], scores[batch, cls, candidates],
                                      iou_threshold)]
                index = torch.stack([torch.full_like(keep, batch), torch.full_like(keep, cls),
                                     keep], dim=1)
                selected.append(index)
        return torch.cat(selected).long()

    @staticmethod
    def symbolic(g: Any, boxes: Any, scores: Any, iou_threshold: float,
                 score_threshold: float) -> Any:
        max_output = g.op('Constant', value_t=torch.tensor([2 ** 31 - 1], dtype=torch.long))
        iou = g.op('Constant', value_t=torch.tensor([iou_threshold], dtype=torch.float))
        score = g.op('Constant', value_t=torch.tensor([score_threshold], dtype=torch.float))
        return g.op('NonMaxSuppression', boxes, scores, max_output, iou, score,
                    center_point_box_i=0)
