"""Parameters and FLOPs of a config's model at the paper's input sizes."""
from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch
from mmengine.analysis import FlopAnalyzer
from mmengine.config import Config

from .models import build_toolbox_model
from .toolbox import toolbox_of

#: Detection FLOPs at 1280x800 with the paper's (mmdet 2.x) dummy forward: the box
#: heads on 1000 proposals, the mask heads on the first 100 of them.
DET_INPUT_SIZE = (800, 1280)
NUM_PROPOSALS = 1000
NUM_MASK_ROIS = 100


@dataclass(frozen=True)
class Complexity:
    params: int
    flops: int | None
    input_size: tuple[int, int]


def build_model(cfg: Config) -> torch.nn.Module:
    """Build the config's model through its toolbox's registry, without pretrained weights."""
    model_cfg = copy.deepcopy(cfg.model)  # a shallow copy shares the backbone dict
    model_cfg.backbone.pop('init_cfg', None)  # no download for counting
    return build_toolbox_model(toolbox_of(cfg), model_cfg)


def paper_input_size(cfg: Config) -> tuple[int, int]:
    """(height, width) of the paper's FLOPs: 1280x800 for COCO, 4:1 of the crop for ADE20K."""
    if toolbox_of(cfg) == 'mmdet':
        return DET_INPUT_SIZE
    crop_height = cfg.model.data_preprocessor.size[0]
    return crop_height, 4 * crop_height


class DetectorDummyForward(torch.nn.Module):
    """A two-stage detector's backbone, neck, RPN and RoI heads on fixed-count proposals."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        from mmdet.structures.bbox import bbox2roi
        feats = self.detector.extract_feat(x)
        outs = list(self.detector.rpn_head(feats)[0])
        height, width = x.shape[-2:]
        gen = torch.Generator().manual_seed(0)
        corners = torch.rand(NUM_PROPOSALS, 2, 2, generator=gen) * torch.tensor([width, height])
        boxes = torch.cat([corners.min(1).values, corners.max(1).values + 1], dim=1)
        rois = bbox2roi([boxes])
        roi_head = self.detector.roi_head
        stages = range(roi_head.num_stages) if hasattr(roi_head, 'num_stages') else [None]
        for stage in stages:
            args = (feats, rois) if stage is None else (stage, feats, rois)
            outs.append(roi_head._bbox_forward(*args)['cls_score'])
            if roi_head.with_mask:
                mask_args = (feats, rois[:NUM_MASK_ROIS]) if stage is None else (
                    stage, feats, rois[:NUM_MASK_ROIS])
                outs.append(roi_head._mask_forward(*mask_args)['mask_preds'])
        return outs


class DetectorTensorForward(torch.nn.Module):
    """Any other detector's (DETR family, one-stage) tensor-mode forward on one image."""

    def __init__(self, detector: torch.nn.Module) -> None:
        super().__init__()
        self.detector = detector

    def forward(self, x: torch.Tensor):
        from mmdet.structures import DetDataSample
        shape = tuple(x.shape[-2:])
        sample = DetDataSample(metainfo=dict(img_shape=shape, batch_input_shape=shape,
                                             pad_shape=shape))
        return self.detector._forward(x, [sample])


class SegmentorForward(torch.nn.Module):
    """A segmentor's tensor-mode forward (backbone, neck and decode head) on one image.

    Query-based decode heads (Mask2Former, MaskFormer) take the batch's data samples as a
    second argument, which mmseg's tensor mode does not pass; they get one image's metainfo.
    """

    def __init__(self, segmentor: torch.nn.Module) -> None:
        super().__init__()
        self.segmentor = segmentor
        head_arguments = inspect.signature(segmentor.decode_head.forward).parameters
        self.head_takes_samples = 'batch_data_samples' in head_arguments

    def forward(self, x: torch.Tensor):
        if not self.head_takes_samples:
            return self.segmentor._forward(x)
        from mmseg.structures import SegDataSample
        shape = tuple(x.shape[-2:])
        sample = SegDataSample(metainfo=dict(img_shape=shape, pad_shape=shape))
        return self.segmentor.decode_head(self.segmentor.extract_feat(x), [sample])


def model_complexity(cfg: Config, input_size: tuple[int, int] | None = None,
                     with_flops: bool = True) -> Complexity:
    """Count parameters (and FLOPs with mmengine's analyzer) of ``cfg.model``.

    FLOPs count one multiply-add as one FLOP, as the paper does, on one image:
    for two-stage detectors the paper's dummy forward (:class:`DetectorDummyForward`),
    for other detectors and for segmentors the tensor-mode forward with all heads.
    """
    size = tuple(input_size or paper_input_size(cfg))
    model = build_model(cfg).eval()
    params = sum(p.numel() for p in model.parameters())
    flops = None
    if with_flops:
        if toolbox_of(cfg) == 'mmseg':
            wrapper = SegmentorForward
        elif hasattr(model, 'roi_head') and hasattr(model, 'rpn_head'):
            wrapper = DetectorDummyForward
        else:
            wrapper = DetectorTensorForward
        with torch.no_grad():
            analyzer = FlopAnalyzer(wrapper(model), (torch.zeros(1, 3, *size),))
            analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            flops = int(analyzer.total())
    return Complexity(params, flops, size)
