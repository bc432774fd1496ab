"""mmseg segmentors as an ONNX graph: a normalized image batch in, the class map out."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ops import exportable_copy


class SegmentorExport(nn.Module):
    """Whole-image inference of an mmseg ``EncoderDecoder``, ending in the class map.

    ``forward(input)`` takes the batch as the segmentor's data preprocessor makes it (N, 3,
    H, W; normalized, in the model's channel order) and returns ``output`` (N, 1, H, W,
    int64): the argmax over classes of the decode head's logits resized to the input, as
    ``EncoderDecoder`` in ``mode='whole'`` computes them. Auxiliary heads are not run.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        super().__init__()
        segmentor = exportable_copy(segmentor)
        self.backbone = segmentor.backbone
        self.neck = segmentor.neck if getattr(segmentor, 'with_neck', False) else None
        self.decode_head = segmentor.decode_head
        self.align_corners = segmentor.decode_head.align_corners

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the ONNX name)
        features = self.backbone(input)
        if self.neck is not None:
            features = self.neck(features)
        logits = self.decode_head(features)
        logits = F.interpolate(logits, size=input.shape[2:], mode='bilinear',
                               align_corners=self.align_corners)
        return logits.argmax(dim=1, keepdim=True)
