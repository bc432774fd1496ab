"""mmseg segmentors as an ONNX graph: a normalized image batch in, the decode head's logits out.

The graph stops where mmseg's post-processing starts to depend on each image: mmseg resizes
the logits to the batch's (padded) input size, drops each image's padding, resizes what is
left to the image's original size and takes the argmax there. Each image of a batch has its
own padding and original size, so these steps are done after the graph, per image:
:class:`~convnext_dense.deploy.runtime.ONNXRuntimeSegmentor` runs mmseg's own code for them.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .features import FeaturesExport
from .ops import exportable_copy


class SegmentorExport(FeaturesExport):
    """Whole-image inference of an mmseg ``EncoderDecoder`` up to its decode head's logits.

    ``forward(input)`` takes the batch as the segmentor's data preprocessor makes it (N, 3,
    H, W; normalized, in the model's channel order, padded) and returns ``seg_logits`` (N,
    num_classes, h, w, float32): the decode head's forward, at the head's resolution (1/4
    of the input for UperNet and DeepLabV3+), as ``EncoderDecoder.encode_decode`` computes it
    before its resize. Auxiliary heads are not run.
    """

    def __init__(self, segmentor: nn.Module) -> None:
        segmentor = exportable_copy(segmentor)
        super().__init__(segmentor)
        self.decode_head = segmentor.decode_head

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the ONNX name)
        return self.decode_head(self.features(input))



#: mmseg's ``BaseDecodeHead`` threshold for a one-channel (sigmoid) head given none
DEFAULT_BINARY_THRESHOLD = 0.3


def postprocess_info(cfg: Any) -> dict[str, Any]:
    """What the post-processing after the graph needs from the config (``deploy.json``).

    ``align_corners`` of the decode head (its bilinear resizes), and for a head with one
    output channel (sigmoid, not argmax) its ``threshold``.
    """
    head = cfg.model.decode_head
    info: dict[str, Any] = {'align_corners': bool(head.get('align_corners', False))}
    if head.get('out_channels') == 1:
        threshold = head.get('threshold')
        info['threshold'] = float(DEFAULT_BINARY_THRESHOLD if threshold is None else threshold)
    return info
