"""Mask2Former (mmseg semantic segmentation, mmdet instance segmentation) as ONNX graphs.

Both run the backbone, the multi-scale deformable pixel decoder (its attention with
:func:`~.msda.gather_sampler`: standard ONNX operators) and the transformer decoder of mmdet's
``Mask2FormerHead``; they differ in how the last decoder layer's per-query class logits and mask
logits become the output:

- :class:`Mask2FormerSegmentorExport` (mmseg ``EncoderDecoder`` with a ``Mask2FormerHead``):
  ``seg_logits`` (N, num_classes, H, W) as mmseg's ``Mask2FormerHead.predict`` computes them:
  the mask logits resized bilinearly to the input size, the per-pixel sum of the queries'
  class probabilities (softmax without the no-object class) times their mask probabilities.
  The graph's output is at the input size; the runtime does the rest of mmseg's
  post-processing, as for the other segmentors.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .msda import gather_sampler
from .ops import exportable_copy


def _mask_logits_at(mask_preds: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, Q, h, w) mask logits resized bilinearly (``align_corners=False``) to ``like``'s
    (height, width), as mmdet's and mmseg's Mask2Former post-processing resizes them."""
    return F.interpolate(mask_preds, size=like.shape[-2:], mode='bilinear', align_corners=False)


class Mask2FormerSegmentorExport(nn.Module):
    """Whole-image inference of an mmseg ``EncoderDecoder`` with a ``Mask2FormerHead`` up to
    ``seg_logits`` at the input size (mmseg's ``Mask2FormerHead.predict``).

    ``forward(input)`` takes the batch as the data preprocessor makes it (N, 3, H, W) and
    returns (N, num_classes, H, W) float32 class scores.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        segmentor = exportable_copy(segmentor)
        self.backbone = segmentor.backbone
        self.neck = segmentor.neck if getattr(segmentor, 'with_neck', False) else None
        self.decode_head = segmentor.decode_head

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the ONNX name)
        features = self.backbone(input)
        if self.neck is not None:
            features = self.neck(features)
        with gather_sampler():
            # the head reads nothing from the data samples but the batch size (from x)
            cls_scores, mask_preds = self.decode_head(features, [])
        cls_probs = F.softmax(cls_scores[-1], dim=-1)[..., :-1]
        mask_probs = _mask_logits_at(mask_preds[-1], input).sigmoid()
        return torch.einsum('bqc,bqhw->bchw', cls_probs, mask_probs)
