"""mmdet two-stage detectors (Mask R-CNN, Cascade Mask R-CNN) as one ONNX graph with NMS.

``forward(input)`` takes the batch as mmdet's data preprocessor makes it (N, 3, H, W;
normalized, padded) and returns, per image, the ``max_per_img`` best detections after
mmdet's test-time post-processing, in mmdeploy's layout:

- ``dets`` (N, K, 5): boxes (x1, y1, x2, y2) in input pixels and their scores;
- ``labels`` (N, K) int64;
- ``masks`` (N, K, M, M): each detection's mask probabilities on its box (M = 28), for the
  runtime to paste into the image as mmdet's ``FCNMaskHead`` does.

Entries after the last detection are padding with score 0 (real detections score above the
config's ``score_thr``). The computation is mmdet's, step by step (anchors, RPN top-k per level
and NMS per level, RoIAlign on the level each RoI maps to, class-specific box decoding, the
Cascade heads' refinement with scores averaged over stages and masks averaged over stages,
per-class NMS); each data-dependent selection is written as top-k over a fixed-size padded
candidate list, so batch size and image size stay dynamic. Boxes are clipped to the input
size (mmdet clips to the unpadded image shape; the runtime clips the final boxes again).
"""
from __future__ import annotations

import torch
from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
from torch import nn
from torchvision.ops import roi_align

from .ops import OnnxNonMaxSuppression, exportable_copy

SUPPORTED_ROI_HEADS = ('StandardRoIHead', 'CascadeRoIHead')


def _level_anchors(base_anchors: torch.Tensor, stride: tuple[float, float],
                   feature: torch.Tensor) -> torch.Tensor:
    """mmdet's ``AnchorGenerator.single_level_grid_priors`` for a feature of any size."""
    height, width = feature.shape[-2:]
    shift_x = torch.arange(width, device=feature.device).to(base_anchors.dtype) * stride[0]
    shift_y = torch.arange(height, device=feature.device).to(base_anchors.dtype) * stride[1]
    yy, xx = torch.meshgrid(shift_y, shift_x, indexing='ij')
    xx, yy = xx.reshape(-1), yy.reshape(-1)
    shifts = torch.stack([xx, yy, xx, yy], dim=-1)
    return (shifts[:, None, :] + base_anchors[None, :, :]).reshape(-1, 4)


def _decode(coder: nn.Module, priors: torch.Tensor, deltas: torch.Tensor,
            image_size: torch.Tensor) -> torch.Tensor:
    """``DeltaXYWHBBoxCoder.decode`` for boxes of any leading shape, clipped to the image.

    Calls mmdet's ``delta2bbox`` (the coder's own decode takes mmdet 2.x's ONNX branch
    during export, which imports the removed ``mmdet.core``).
    """
    boxes = delta2bbox(priors.reshape(-1, 4), deltas.reshape(-1, 4), coder.means, coder.stds,
                       max_shape=image_size, clip_border=coder.clip_border,
                       add_ctr_clamp=coder.add_ctr_clamp, ctr_clamp=coder.ctr_clamp)
    return boxes.reshape(priors.shape)


def _top_k_padded(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top ``k`` along dim 1, padding with score -1 when there are fewer than ``k``."""
    padding = scores.new_full((scores.shape[0], k), -1.0)
    return torch.cat([scores, padding], dim=1).topk(k, dim=1)


def _gather_rows(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``values[n, index[n, j]]`` for (N, L, ...) values and (N, J) indices; out of range -> 0."""
    padding = values.new_zeros((values.shape[0], index.shape[1]) + values.shape[2:])
    values = torch.cat([values, padding], dim=1)
    expanded = index.reshape(index.shape + (1,) * (values.dim() - 2)).expand(
        (-1, -1) + values.shape[2:])
    return values.gather(1, expanded)


def _batched_nms_top_k(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
                       iou_threshold: float, score_threshold: float,
                       k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mmcv's ``batched_nms`` per image, then the ``k`` best: (N, k) scores and indices.

    Boxes of different ``groups`` never suppress each other (mmcv's coordinate offset);
    candidates scoring ``<= score_threshold`` are dropped; missing entries score -1.
    """
    offsets = groups.to(boxes.dtype) * (boxes.max() + 1)
    selected = OnnxNonMaxSuppression.apply(boxes + offsets[..., None], scores[:, None, :],
                                           iou_threshold, score_threshold)
    batch, box = selected[:, 0], selected[:, 2]
    kept = scores.new_full(scores.shape, -1.0)
    kept = kept.index_put((batch, box), scores[batch, box])
    return _top_k_padded(kept, k)


class TwoStageDetectorExport(nn.Module):
    """Test-time forward of an mmdet ``TwoStageDetector`` (RPN + RoI heads), export-ready."""

    def __init__(self, detector: nn.Module) -> None:
        super().__init__()
        roi_head_type = type(detector.roi_head).__name__
        if roi_head_type not in SUPPORTED_ROI_HEADS:
            raise ValueError(f'cannot export a {roi_head_type}: supported RoI heads are '
                             f'{", ".join(SUPPORTED_ROI_HEADS)}')
        detector = exportable_copy(detector)
        self.backbone, self.neck = detector.backbone, detector.neck
        self.rpn_head, self.roi_head = detector.rpn_head, detector.roi_head
        self.rpn_cfg = detector.test_cfg.rpn
        self.rcnn_cfg = detector.test_cfg.rcnn
        self.cascade = roi_head_type == 'CascadeRoIHead'
        generator = self.rpn_head.prior_generator
        for level, anchors in enumerate(generator.base_anchors):
            self.register_buffer(f'base_anchors_{level}', anchors.clone(), persistent=False)
        self.anchor_strides = [tuple(float(s) for s in stride) for stride in generator.strides]

    def _bbox_heads(self) -> list[tuple[nn.Module, nn.Module]]:
        heads, extractors = self.roi_head.bbox_head, self.roi_head.bbox_roi_extractor
        if not self.cascade:
            return [(extractors, heads)]
        return list(zip(extractors, heads))

    def _mask_heads(self) -> list[tuple[nn.Module, nn.Module]]:
        heads, extractors = self.roi_head.mask_head, self.roi_head.mask_roi_extractor
        if not self.cascade:
            return [(extractors, heads)]
        if self.roi_head.share_roi_extractor:
            extractors = [extractors] * len(heads)
        return list(zip(extractors, heads))

    @staticmethod
    def _roi_features(extractor: nn.Module, features: tuple[torch.Tensor, ...],
                      rois: torch.Tensor) -> torch.Tensor:
        """mmdet's ``SingleRoIExtractor``: each RoI pooled on the level its scale maps to."""
        num_levels = len(extractor.roi_layers)
        scale = torch.sqrt((rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2]))
        levels = torch.floor(torch.log2(scale / extractor.finest_scale + 1e-6))
        levels = levels.clamp(min=0, max=num_levels - 1)
        pooled = 0
        for level, layer in enumerate(extractor.roi_layers):
            level_features = roi_align(
                features[level], rois, output_size=tuple(layer.output_size),
                spatial_scale=float(layer.spatial_scale),
                sampling_ratio=int(layer.sampling_ratio), aligned=bool(layer.aligned))
            chosen = (levels == level).to(level_features.dtype)[:, None, None, None]
            pooled = pooled + level_features * chosen
        return pooled

    def _proposals(self, features: tuple[torch.Tensor, ...],
                   image_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RPN proposals (N, P, 4) and their scores (N, P), -1 for padding."""
        cls_scores, bbox_preds = self.rpn_head(features)
        num_images = cls_scores[0].shape[0]
        nms_pre = int(self.rpn_cfg.get('nms_pre', -1))
        level_scores, level_boxes, level_ids = [], [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            anchors = _level_anchors(getattr(self, f'base_anchors_{level}'),
                                     self.anchor_strides[level], cls_score)
            scores = cls_score.permute(0, 2, 3, 1).reshape(num_images, -1).sigmoid()
            deltas = bbox_pred.permute(0, 2, 3, 1).reshape(num_images, -1, 4)
            priors = anchors[None].expand(num_images, -1, -1)
            if nms_pre > 0:
                scores, index = _top_k_padded(scores, nms_pre)
                deltas, priors = _gather_rows(deltas, index), _gather_rows(priors, index)
            boxes = _decode(self.rpn_head.bbox_coder, priors, deltas, image_size)
            level_scores.append(scores)
            level_boxes.append(boxes)
            level_ids.append(torch.full_like(scores, level))
        scores, boxes = torch.cat(level_scores, 1), torch.cat(level_boxes, 1)
        min_size = float(self.rpn_cfg.get('min_bbox_size', -1))
        if min_size >= 0:
            valid = ((boxes[..., 2] - boxes[..., 0]) > min_size) & (
                (boxes[..., 3] - boxes[..., 1]) > min_size)
            scores = torch.where(valid, scores, torch.full_like(scores, -1.0))
        scores, index = _batched_nms_top_k(
            boxes, scores, torch.cat(level_ids, 1), float(self.rpn_cfg.nms.iou_threshold),
            0.0, int(self.rpn_cfg.max_per_img))
        return _gather_rows(boxes, index), scores

    def _classify(self, features: tuple[torch.Tensor, ...], proposals: torch.Tensor,
                  image_size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores (R, C) and class-specific boxes (R, C, 4) of (R, 4) proposals."""
        num_images, num_proposals = proposals.shape[:2]
        image_index = torch.arange(num_images, device=proposals.device).to(proposals.dtype)
        image_index = image_index[:, None].expand(-1, num_proposals).reshape(-1, 1)
        boxes = proposals.reshape(-1, 4)
        stages = self._bbox_heads()
        logits_sum = 0
        for stage, (extractor, head) in enumerate(stages):
            rois = torch.cat([image_index, boxes], dim=1)
            cls_score, bbox_pred = head(self._roi_features(extractor, features, rois))
            logits_sum = logits_sum + cls_score
            num_classes = head.num_classes
            if stage < len(stages) - 1:  # Cascade: refine by the predicted class's deltas
                labels = cls_score[:, :-1].argmax(dim=1)
                deltas = bbox_pred.reshape(-1, num_classes, 4)
                deltas = deltas.gather(1, labels[:, None, None].expand(-1, 1, 4))[:, 0]
                boxes = _decode(head.bbox_coder, boxes, deltas, image_size)
        scores = (logits_sum / len(stages)).softmax(dim=-1)[:, :-1]
        deltas = bbox_pred.reshape(-1, num_classes, 4)
        repeated = boxes[:, None, :].expand(-1, num_classes, -1)
        boxes = _decode(head.bbox_coder, repeated, deltas, image_size)
        return scores, boxes

    def _masks(self, features: tuple[torch.Tensor, ...], dets: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
        """Mask probabilities (N, K, M, M) of each detection's class, averaged over stages."""
        num_images, num_dets = dets.shape[:2]
        image_index = torch.arange(num_images, device=dets.device).to(dets.dtype)
        image_index = image_index[:, None].expand(-1, num_dets).reshape(-1, 1)
        rois = torch.cat([image_index, dets[..., :4].reshape(-1, 4)], dim=1)
        flat_labels = labels.reshape(-1)
        stages = self._mask_heads()
        probabilities = 0
        for extractor, head in stages:
            mask_preds = head(self._roi_features(extractor, features, rois))
            size = mask_preds.shape[-2:]
            index = flat_labels[:, None, None, None].expand(-1, 1, size[0], size[1])
            probabilities = probabilities + mask_preds.gather(1, index)[:, 0].sigmoid()
        probabilities = probabilities / len(stages)
        return probabilities.reshape(num_images, num_dets, size[0], size[1])

    def forward(self, input: torch.Tensor  # noqa: A002 (the ONNX name)
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        image_size = torch._shape_as_tensor(input)[2:].to(input.dtype)
        features = self.neck(self.backbone(input))
        proposals, proposal_scores = self._proposals(features, image_size)
        num_images, num_proposals = proposals.shape[:2]

        scores, boxes = self._classify(features, proposals, image_size)
        num_classes = scores.shape[1]
        valid = (proposal_scores > 0).reshape(-1, 1)
        scores = torch.where(valid, scores, torch.full_like(scores, -1.0))
        scores = scores.reshape(num_images, num_proposals * num_classes)
        boxes = boxes.reshape(num_images, num_proposals * num_classes, 4)
        labels = torch.arange(num_classes, device=input.device)
        labels = labels.repeat(num_proposals)[None].expand(num_images, -1)
        det_scores, index = _batched_nms_top_k(
            boxes, scores, labels, float(self.rcnn_cfg.nms.iou_threshold),
            float(self.rcnn_cfg.score_thr), int(self.rcnn_cfg.max_per_img))
        det_boxes = _gather_rows(boxes, index)
        det_labels = _gather_rows(labels, index)
        det_scores = det_scores.clamp(min=0)  # padding: score 0
        dets = torch.cat([det_boxes, det_scores[..., None]], dim=-1)
        masks = self._masks(features, dets, det_labels)
        return dets, det_labels, masks
