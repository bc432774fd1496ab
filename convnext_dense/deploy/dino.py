"""mmdet's DINO as one ONNX graph: backbone, neck, deformable transformer, head, top-k.

``forward(input, img_shape)`` takes the batch as mmdet's data preprocessor makes it and each
image's (height, width) before padding, as the two-stage detectors' graph does
(:mod:`.detection`), and returns mmdet's ``DINOHead.predict_by_feat`` results in the same
layout: ``dets`` (N, K, 5: x1, y1, x2, y2 in input pixels, score) and ``labels`` (N, K), with
K = ``test_cfg.max_per_img``. Every one of the K is a detection (DINO has no score threshold).

The computation is mmdet's: the padding masks built from ``img_shape`` (mmdet's
``pre_transformer`` for a padded batch; with no padding they change nothing), mmdet's own
encoder, query selection (``pre_decoder``), decoder and head; the deformable attention samples
with standard ONNX operators (:mod:`.msda`). The post-processing is
``DETRHead._predict_by_feat_single`` for sigmoid classification: the best ``max_per_img`` of
the sigmoid scores over queries x classes, each box (cx, cy, w, h, normalized) scaled to its
image's ``img_shape`` and clipped to it.

What the graph does not compute is refused before tracing, by name (:func:`check_dino`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from torch import nn

from .detection import _clip, _gather_rows
from .errors import refuse_detector
from .msda import gather_sampler
from .ops import exportable_copy

#: the ``test_cfg`` keys the graph honours
DINO_TEST_KEYS = ('max_per_img',)


def dino_problems(detector: nn.Module) -> list[str]:
    """Each setting of an mmdet ``DINO`` that :class:`DINOExport` does not compute as mmdet's
    ``predict`` does, named by its config key with the reason."""
    problems = []
    head = detector.bbox_head
    if type(head).__name__ != 'DINOHead':
        problems.append(f'model.bbox_head.type={type(head).__name__!r}: the exported graph '
                        'computes DINOHead only')
    if not getattr(head.loss_cls, 'use_sigmoid', False):
        problems.append('model.bbox_head.loss_cls.use_sigmoid=False: the exported graph scores '
                        'with a sigmoid over queries x classes (a softmax DETR head is not '
                        'exported)')
    test_cfg = detector.test_cfg or {}
    for key in test_cfg:
        if key not in DINO_TEST_KEYS:
            problems.append(f'model.test_cfg.{key}: not computed by the exported graph (it '
                            f'honours {", ".join(DINO_TEST_KEYS)})')
    candidates = detector.num_queries * head.num_classes
    max_per_img = test_cfg.get('max_per_img', detector.num_queries)
    if not 1 <= int(max_per_img) <= candidates:
        problems.append(f'model.test_cfg.max_per_img={max_per_img!r}: the exported graph keeps '
                        f'1 to num_queries x num_classes ({candidates}) detections per image')
    return problems


def check_dino(detector: nn.Module) -> None:
    """Refuse a DINO whose settings the exported graph would not honour.

    Raises:
        ExportError: naming each such setting (its config key) and why.
    """
    refuse_detector(dino_problems(detector))


@contextlib.contextmanager
def traceable_linspace() -> Iterator[None]:
    """Within the block, ``torch.linspace`` with a tensor ``steps`` (a feature map's height or
    width, as mmdet's deformable DETR passes them: ``linspace(0, H - 1, H)``) is computed as
    ``start + arange(steps) * (end - start) / (steps - 1)``, which the exporter traces with the
    size dynamic (``linspace`` turns ``steps`` into a constant: the graph would then hold the
    traced input's feature sizes). Other calls are ``torch.linspace``'s own."""
    original = torch.linspace

    def linspace(start: Any, end: Any, steps: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        if not isinstance(steps, torch.Tensor) or args:
            return original(start, end, steps, *args, **kwargs)
        dtype = kwargs.get('dtype') or torch.get_default_dtype()
        index = torch.arange(steps, device=kwargs.get('device')).to(dtype)
        start, end = torch.as_tensor(start).to(dtype), torch.as_tensor(end).to(dtype)
        return start + index * ((end - start) / (steps - 1).clamp(min=1).to(dtype))

    torch.linspace = linspace
    try:
        yield
    finally:
        torch.linspace = original


class DINOExport(nn.Module):
    """Test-time forward of an mmdet ``DINO``, export-ready (see the module docstring).

    Raises:
        ExportError: a setting the graph does not compute (:func:`check_dino`).
    """

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        check_dino(detector)
        self.detector = exportable_copy(detector)
        self.max_per_img = int((detector.test_cfg or {}).get('max_per_img',
                                                             detector.num_queries))

    def _pre_transformer(self, feats: tuple[torch.Tensor, ...], input: torch.Tensor,  # noqa: A002
                         img_shape: torch.Tensor) -> tuple[dict[str, Any], dict[str, Any]]:
        """mmdet's ``DeformableDETR.pre_transformer`` with the padding masks of a padded batch,
        built from ``img_shape`` (1 on padding), for any batch and input size."""
        detector = self.detector
        height, width = input.shape[-2:]
        rows = torch.arange(height, device=input.device)[None, :, None]
        cols = torch.arange(width, device=input.device)[None, None, :]
        masks = ((rows >= img_shape[:, 0, None, None])
                 | (cols >= img_shape[:, 1, None, None])).to(input.dtype)
        feat_flatten, pos_flatten, mask_flatten, shapes, level_masks = [], [], [], [], []
        for level, feat in enumerate(feats):
            batch_size, channels = feat.shape[:2]
            mask = F.interpolate(masks[None], size=feat.shape[-2:]).to(torch.bool)[0]
            pos_embed = detector.positional_encoding(mask)
            shapes.append(torch._shape_as_tensor(feat)[2:].to(feat.device))
            feat_flatten.append(feat.view(batch_size, channels, -1).permute(0, 2, 1))
            pos_embed = pos_embed.view(batch_size, channels, -1).permute(0, 2, 1)
            pos_flatten.append(pos_embed + detector.level_embed[level].view(1, 1, -1))
            mask_flatten.append(mask.flatten(1))
            level_masks.append(mask)
        spatial_shapes = torch.cat(shapes).view(-1, 2)
        level_start_index = torch.cat((spatial_shapes.new_zeros((1, )),
                                       spatial_shapes.prod(1).cumsum(0)[:-1]))
        valid_ratios = torch.stack([detector.get_valid_ratio(m) for m in level_masks], 1)
        memory_mask = torch.cat(mask_flatten, 1)
        encoder_inputs = dict(feat=torch.cat(feat_flatten, 1), feat_mask=memory_mask,
                              feat_pos=torch.cat(pos_flatten, 1), spatial_shapes=spatial_shapes,
                              level_start_index=level_start_index, valid_ratios=valid_ratios)
        decoder_inputs = dict(memory_mask=memory_mask, spatial_shapes=spatial_shapes,
                              level_start_index=level_start_index, valid_ratios=valid_ratios)
        return encoder_inputs, decoder_inputs

    def forward(self, input: torch.Tensor,  # noqa: A002 (the ONNX name)
                img_shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``dets`` and ``labels`` of a preprocessed batch and each image's (height, width)
        before padding."""
        detector = self.detector
        feats = detector.extract_feat(input)
        with gather_sampler(), traceable_linspace():
            encoder_inputs, decoder_inputs = self._pre_transformer(feats, input, img_shape)
            encoder_outputs = detector.forward_encoder(**encoder_inputs)
            query_inputs, _ = detector.pre_decoder(**encoder_outputs)
            decoder_inputs.update(query_inputs)
            decoder_outputs = detector.forward_decoder(**decoder_inputs)
        cls_scores, bbox_preds = detector.bbox_head(**decoder_outputs)
        num_classes = cls_scores.shape[-1]
        scores = cls_scores[-1].sigmoid().flatten(1)  # (N, queries x classes)
        scores, index = scores.topk(self.max_per_img, dim=1)
        labels = index % num_classes
        queries = torch.div(index, num_classes, rounding_mode='floor')
        boxes = bbox_cxcywh_to_xyxy(_gather_rows(bbox_preds[-1], queries))
        limits = img_shape.to(input.dtype)[:, None, :]  # (N, 1, 2): height, width
        boxes = _clip(boxes * limits[..., [1, 0, 1, 0]], limits)
        return torch.cat([boxes, scores[..., None]], dim=-1), labels
