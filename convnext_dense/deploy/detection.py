"""mmdet two-stage detectors (Faster R-CNN, Mask R-CNN, Cascade (Mask) R-CNN) as one ONNX graph.

``forward(input, img_shape)`` takes the batch as mmdet's data preprocessor makes it (``input``
N, 3, H, W: normalized, padded) and each image's ``img_shape`` (N, 2 int64: height and width
of the resized image before padding, mmdet's ``img_shape``), and returns, per image, the
``max_per_img`` best detections after mmdet's test-time post-processing, in mmdeploy's layout:

- ``dets`` (N, K, 5): boxes (x1, y1, x2, y2) in input pixels and their scores;
- ``labels`` (N, K) int64;
- ``masks`` (N, K, M, M), detectors with a mask head only: each detection's mask
  probabilities on its box (M = 28), for the runtime to paste into the image as mmdet's
  ``FCNMaskHead`` does.

Entries after the last detection are padding with score 0 (real detections score above the
config's ``score_thr``). The computation is mmdet's, step by step (anchors, RPN top-k per level
and NMS per level, RoIAlign on the level each RoI maps to, class-specific or class-agnostic box
decoding, the Cascade heads' refinement with scores averaged over stages and masks averaged over
stages, per-class NMS); each data-dependent selection is written as top-k over a fixed-size
padded candidate list, so batch size and image size stay dynamic. Boxes are clipped to each
image's ``img_shape`` wherever mmdet clips them (the RPN's and each box head's decoding), so the
mask heads see the boxes mmdet's see, whatever the padding of the batch.

What the graph does not compute is refused before tracing, by name (:func:`check_detector`):
the export never silently replaces a setting.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from mmdet.models.task_modules.coders.delta_xywh_bbox_coder import delta2bbox
from torch import nn
from torchvision.ops import roi_align

from .errors import refuse_detector
from .features import FeaturesExport
from .ops import OnnxNonMaxSuppression, exportable_copy

SUPPORTED_ROI_HEADS = ('StandardRoIHead', 'CascadeRoIHead')
SUPPORTED_RPN_HEADS = ('RPNHead',)
SUPPORTED_BBOX_HEADS = ('BBoxHead', 'ConvFCBBoxHead', 'Shared2FCBBoxHead',
                        'Shared4Conv1FCBBoxHead')
SUPPORTED_MASK_HEADS = ('FCNMaskHead',)
SUPPORTED_ROI_EXTRACTORS = ('SingleRoIExtractor',)
#: the keys of an ``nms`` config (mmcv's ``batched_nms`` and ``nms`` arguments) the graph honours
NMS_KEYS = ('type', 'iou_threshold', 'class_agnostic', 'split_thr', 'max_num',
            'score_threshold', 'offset')


class NmsSettings(NamedTuple):
    """One NMS step of mmdet's post-processing, as the graph computes it."""

    iou_threshold: float
    score_threshold: float  #: candidates scoring ``<=`` this are dropped
    max_num: int  #: the best this many are kept
    class_agnostic: bool  #: all candidates in one group


def nms_settings(nms_cfg: Any, score_thr: float, max_per_img: int) -> NmsSettings:
    """mmcv's ``batched_nms(..., nms_cfg)`` after a ``score > score_thr`` filter, cut to the
    best ``max_per_img``: the config's ``score_threshold`` and ``max_num`` (applied by mmcv's
    ``nms``) combine with them; ``split_thr`` changes nothing for hard NMS (NMS per group and
    the coordinate offset keep the same boxes)."""
    max_num = int(nms_cfg.get('max_num', -1))
    return NmsSettings(
        iou_threshold=float(nms_cfg['iou_threshold']),
        score_threshold=max(float(score_thr), float(nms_cfg.get('score_threshold', 0))),
        max_num=min(max_num, max_per_img) if max_num > 0 else max_per_img,
        class_agnostic=bool(nms_cfg.get('class_agnostic', False)))


def _type(obj: Any) -> str:
    return type(obj).__name__


def _nms_problems(nms_cfg: Any, setting: str) -> list[str]:
    if nms_cfg is None:
        return [f'{setting}=None: the exported graph applies NMS; mmdet skips it']
    problems = []
    nms_type = nms_cfg.get('type', 'nms')
    if nms_type != 'nms':
        why = ('the exported graph computes hard NMS only (soft-NMS rescores the candidates '
               'one after another, a sequential loop over all of them that the graph does '
               'not compute exactly)' if nms_type == 'soft_nms' else
               'the exported graph computes hard NMS (type=\'nms\') only')
        problems.append(f'{setting}.type={nms_type!r}: {why}')
    if 'iou_threshold' not in nms_cfg:
        problems.append(f'{setting}.iou_threshold: missing')
    if int(nms_cfg.get('offset', 0)) != 0:
        problems.append(f'{setting}.offset={nms_cfg["offset"]!r}: the exported graph measures '
                        'boxes as x2 - x1 (offset=0, ONNX NonMaxSuppression)')
    for key in nms_cfg:
        if key not in NMS_KEYS:
            problems.append(f'{setting}.{key}: not computed by the exported graph (it honours '
                            f'{", ".join(NMS_KEYS)})')
    return problems


def _max_per_img_problems(cfg: Any, setting: str) -> list[str]:
    value = cfg.get('max_per_img')
    if value is None or int(value) < 1:
        return [f'{setting}.max_per_img={value!r}: the exported graph keeps a fixed number of '
                'boxes per image: a positive max_per_img is needed']
    return []


def _extractor_problems(extractor: nn.Module, setting: str) -> list[str]:
    if _type(extractor) not in SUPPORTED_ROI_EXTRACTORS:
        return [f'{setting}.type={_type(extractor)!r}: the exported graph pools RoIs as '
                f'{", ".join(SUPPORTED_ROI_EXTRACTORS)} only']
    layer = extractor.roi_layers[0]
    if _type(layer) != 'RoIAlign' or getattr(layer, 'pool_mode', 'avg') != 'avg':
        mode = f', pool_mode={layer.pool_mode!r}' if hasattr(layer, 'pool_mode') else ''
        return [f'{setting}.roi_layer: {_type(layer)}{mode}: the exported graph pools with '
                "RoIAlign (pool_mode='avg') only"]
    return []


def _bbox_head_problems(head: nn.Module, setting: str) -> list[str]:
    if _type(head) not in SUPPORTED_BBOX_HEADS:
        return [f'{setting}.type={_type(head)!r}: the exported graph computes '
                f'{", ".join(SUPPORTED_BBOX_HEADS)} only']
    problems = []
    if not (head.with_cls and head.with_reg):
        problems.append(f'{setting}: with_cls={head.with_cls}, with_reg={head.with_reg}: the '
                        'exported graph needs both the classifier and the regressor')
    if head.custom_cls_channels or head.custom_activation:
        problems.append(f'{setting}.loss_cls.type={_type(head.loss_cls)!r}: a custom '
                        'activation; the exported graph scores boxes with a softmax')
    elif getattr(head.loss_cls, 'use_sigmoid', False):
        problems.append(f'{setting}.loss_cls.use_sigmoid=True: sigmoid box classification is '
                        'not exported (the graph scores boxes with a softmax over the classes '
                        'and background)')
    if _type(head.bbox_coder) != 'DeltaXYWHBBoxCoder':
        problems.append(f'{setting}.bbox_coder.type={_type(head.bbox_coder)!r}: the exported '
                        'graph decodes DeltaXYWHBBoxCoder deltas only')
    if head.predict_box_type != 'hbox':
        problems.append(f'{setting}.predict_box_type={head.predict_box_type!r}: the exported '
                        "graph predicts horizontal boxes ('hbox') only")
    return problems


def detector_problems(detector: nn.Module) -> list[str]:
    """Each setting of ``detector`` (an mmdet ``TwoStageDetector``) that
    :class:`TwoStageDetectorExport` does not compute as mmdet's ``predict`` does, named by its
    config key with the reason; empty when the graph computes all of them."""
    problems = []
    rpn = getattr(detector, 'rpn_head', None)
    if rpn is None:
        return ['model.rpn_head: missing; the exported graph makes its proposals with an RPN']
    if _type(rpn) not in SUPPORTED_RPN_HEADS:
        problems.append(f'model.rpn_head.type={_type(rpn)!r}: the exported graph computes '
                        f'{", ".join(SUPPORTED_RPN_HEADS)} proposals only')
    else:
        if _type(rpn.prior_generator) != 'AnchorGenerator':
            problems.append(f'model.rpn_head.anchor_generator.type='
                            f'{_type(rpn.prior_generator)!r}: the exported graph lays out '
                            'AnchorGenerator anchors only')
        if _type(rpn.bbox_coder) != 'DeltaXYWHBBoxCoder':
            problems.append(f'model.rpn_head.bbox_coder.type={_type(rpn.bbox_coder)!r}: the '
                            'exported graph decodes DeltaXYWHBBoxCoder deltas only')
        if not rpn.use_sigmoid_cls:
            problems.append('model.rpn_head.loss_cls.use_sigmoid=False: a softmax RPN is not '
                            'exported (the graph scores anchors with a sigmoid)')
    test_cfg = detector.test_cfg or {}
    rpn_cfg, rcnn_cfg = test_cfg.get('rpn'), test_cfg.get('rcnn')
    if rpn_cfg is None or rcnn_cfg is None:
        problems.append('model.test_cfg: needs rpn and rcnn settings')
    else:
        problems += _nms_problems(rpn_cfg.get('nms'), 'model.test_cfg.rpn.nms')
        problems += _max_per_img_problems(rpn_cfg, 'model.test_cfg.rpn')
        problems += _nms_problems(rcnn_cfg.get('nms'), 'model.test_cfg.rcnn.nms')
        problems += _max_per_img_problems(rcnn_cfg, 'model.test_cfg.rcnn')
        if float(rcnn_cfg.get('score_thr', 0)) < 0:
            problems.append(f'model.test_cfg.rcnn.score_thr={rcnn_cfg.score_thr}: negative; '
                            'the exported graph pads its detections with score 0')

    roi_head = detector.roi_head
    if _type(roi_head) not in SUPPORTED_ROI_HEADS:
        return problems + [f'model.roi_head.type={_type(roi_head)!r}: the exported graph '
                           f'computes {", ".join(SUPPORTED_ROI_HEADS)} only']
    cascade = _type(roi_head) == 'CascadeRoIHead'
    if roi_head.with_shared_head:
        problems.append('model.roi_head.shared_head: the exported graph has no shared head')

    def stages(name: str) -> list[tuple[str, nn.Module]]:
        modules = getattr(roi_head, name)
        if not cascade:
            return [(f'model.roi_head.{name}', modules)]
        return [(f'model.roi_head.{name}[{i}]', m) for i, m in enumerate(modules)]

    for setting, extractor in stages('bbox_roi_extractor'):
        problems += _extractor_problems(extractor, setting)
    bbox_heads = stages('bbox_head')
    for setting, head in bbox_heads:
        problems += _bbox_head_problems(head, setting)
    if len({head.num_classes for _, head in bbox_heads}) > 1:
        problems.append('model.roi_head.bbox_head: the stages differ in num_classes')
    if roi_head.with_mask:
        if not roi_head.share_roi_extractor:
            for setting, extractor in stages('mask_roi_extractor'):
                problems += _extractor_problems(extractor, setting)
        mask_heads = stages('mask_head')
        for setting, head in mask_heads:
            if _type(head) not in SUPPORTED_MASK_HEADS:
                problems.append(f'{setting}.type={_type(head)!r}: the exported graph computes '
                                f'{", ".join(SUPPORTED_MASK_HEADS)} only')
        if len({bool(getattr(head, 'class_agnostic', False)) for _, head in mask_heads}) > 1:
            problems.append('model.roi_head.mask_head: the stages differ in class_agnostic '
                            '(mmdet averages their masks)')
    return problems


def check_detector(detector: nn.Module) -> None:
    """Refuse a detector whose settings the exported graph would not honour.

    Raises:
        ExportError: naming each such setting (its config key) and why.
    """
    refuse_detector(detector_problems(detector))


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


def _clip(boxes: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """Boxes (..., 4) clamped to ``[0, width]`` and ``[0, height]`` of ``limits`` (..., 2:
    height, width; broadcast against the boxes' leading dimensions), as mmdet's
    ``delta2bbox`` clamps them to ``max_shape``."""
    upper = limits[..., [1, 0, 1, 0]]
    return torch.minimum(boxes.clamp(min=0), upper)


def _decode(coder: nn.Module, priors: torch.Tensor, deltas: torch.Tensor,
            limits: torch.Tensor) -> torch.Tensor:
    """``DeltaXYWHBBoxCoder.decode`` for boxes of any leading shape, clipped (if the coder
    clips) to ``limits`` (..., 2: each box's image height and width, broadcast).

    Calls mmdet's ``delta2bbox`` (the coder's own decode takes mmdet 2.x's ONNX branch
    during export, which imports the removed ``mmdet.core``).
    """
    boxes = delta2bbox(priors.reshape(-1, 4), deltas.reshape(-1, 4), coder.means, coder.stds,
                       max_shape=None, clip_border=False, add_ctr_clamp=coder.add_ctr_clamp,
                       ctr_clamp=coder.ctr_clamp).reshape(priors.shape)
    return _clip(boxes, limits) if coder.clip_border else boxes


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

    Boxes of different ``groups`` never suppress each other (mmcv's coordinate offset: each
    image's largest coordinate among its candidates, + 1, times the group); candidates scoring
    ``<= score_threshold`` are dropped; missing entries score -1.
    """
    candidates = scores > score_threshold
    largest = torch.where(candidates, boxes.amax(dim=-1), torch.zeros_like(scores)).amax(dim=1)
    offsets = groups.to(boxes.dtype) * (largest[:, None] + 1)
    selected = OnnxNonMaxSuppression.apply(boxes + offsets[..., None], scores[:, None, :],
                                           iou_threshold, score_threshold)
    batch, box = selected[:, 0], selected[:, 2]
    kept = scores.new_full(scores.shape, -1.0)
    kept = kept.index_put((batch, box), scores[batch, box])
    return _top_k_padded(kept, k)


def _nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor,
         settings: NmsSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_batched_nms_top_k` with an NMS step's settings."""
    if settings.class_agnostic:
        groups = torch.zeros_like(groups)
    return _batched_nms_top_k(boxes, scores, groups, settings.iou_threshold,
                              settings.score_threshold, settings.max_num)


def _class_deltas(head: nn.Module, bbox_pred: torch.Tensor,
                  labels: torch.Tensor) -> torch.Tensor:
    """mmdet's ``BBoxHead.regress_by_class`` deltas: (R, 4) of each RoI's ``labels`` class, or
    the one class-agnostic regression."""
    if head.reg_class_agnostic:
        return bbox_pred.reshape(-1, 4)
    deltas = bbox_pred.reshape(-1, head.num_classes, 4)
    return deltas.gather(1, labels[:, None, None].expand(-1, 1, 4))[:, 0]


def _image_index(num_images: int, per_image: int, like: torch.Tensor) -> torch.Tensor:
    """(num_images * per_image, 1): each row's image, the first column of mmdet's RoIs."""
    index = torch.arange(num_images, device=like.device).to(like.dtype)
    return index[:, None].expand(-1, per_image).reshape(-1, 1)


class TwoStageDetectorExport(FeaturesExport):
    """Test-time forward of an mmdet ``TwoStageDetector`` (RPN + RoI heads), export-ready.

    Raises:
        ExportError: a setting the graph does not compute (:func:`check_detector`).
    """

    def __init__(self, detector: nn.Module) -> None:
        check_detector(detector)
        detector = exportable_copy(detector)
        super().__init__(detector)
        self.rpn_head, self.roi_head = detector.rpn_head, detector.roi_head
        self.cascade = _type(detector.roi_head) == 'CascadeRoIHead'
        self.with_mask = bool(self.roi_head.with_mask)
        rpn_cfg, rcnn_cfg = detector.test_cfg.rpn, detector.test_cfg.rcnn
        self.nms_pre = int(rpn_cfg.get('nms_pre', -1))
        self.min_bbox_size = float(rpn_cfg.get('min_bbox_size', -1))
        self.rpn_nms = nms_settings(rpn_cfg.nms, 0.0, int(rpn_cfg.max_per_img))
        self.rcnn_nms = nms_settings(rcnn_cfg.nms, float(rcnn_cfg.score_thr),
                                     int(rcnn_cfg.max_per_img))
        generator = self.rpn_head.prior_generator
        for level, anchors in enumerate(generator.base_anchors):
            self.register_buffer(f'base_anchors_{level}', anchors.clone(), persistent=False)
        self.anchor_strides = [tuple(float(s) for s in stride) for stride in generator.strides]

    def _stages(self, name: str) -> list[nn.Module]:
        modules = getattr(self.roi_head, name)
        return list(modules) if self.cascade else [modules]

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
                   limits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """RPN proposals (N, P, 4) and their scores (N, P), -1 for padding."""
        cls_scores, bbox_preds = self.rpn_head(features)
        num_images = cls_scores[0].shape[0]
        level_scores, level_boxes, level_ids = [], [], []
        for level, (cls_score, bbox_pred) in enumerate(zip(cls_scores, bbox_preds)):
            anchors = _level_anchors(getattr(self, f'base_anchors_{level}'),
                                     self.anchor_strides[level], cls_score)
            scores = cls_score.permute(0, 2, 3, 1).reshape(num_images, -1).sigmoid()
            deltas = bbox_pred.permute(0, 2, 3, 1).reshape(num_images, -1, 4)
            priors = anchors[None].expand(num_images, -1, -1)
            if self.nms_pre > 0:
                scores, index = _top_k_padded(scores, self.nms_pre)
                deltas, priors = _gather_rows(deltas, index), _gather_rows(priors, index)
            boxes = _decode(self.rpn_head.bbox_coder, priors, deltas, limits[:, None, :])
            level_scores.append(scores)
            level_boxes.append(boxes)
            level_ids.append(torch.full_like(scores, level))
        scores, boxes = torch.cat(level_scores, 1), torch.cat(level_boxes, 1)
        if self.min_bbox_size >= 0:
            valid = ((boxes[..., 2] - boxes[..., 0]) > self.min_bbox_size) & (
                (boxes[..., 3] - boxes[..., 1]) > self.min_bbox_size)
            scores = torch.where(valid, scores, torch.full_like(scores, -1.0))
        scores, index = _nms(boxes, scores, torch.cat(level_ids, 1), self.rpn_nms)
        return _gather_rows(boxes, index), scores

    def _classify(self, features: tuple[torch.Tensor, ...], proposals: torch.Tensor,
                  limits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Class scores (R, C) and boxes per class (R, C, 4) of (N, P, 4) proposals."""
        num_images, num_proposals = proposals.shape[:2]
        image_index = _image_index(num_images, num_proposals, proposals)
        row_limits = limits[:, None, :].expand(-1, num_proposals, -1).reshape(-1, 2)
        boxes = proposals.reshape(-1, 4)
        stages = list(zip(self._stages('bbox_roi_extractor'), self._stages('bbox_head')))
        logits_sum = 0
        for stage, (extractor, head) in enumerate(stages):
            rois = torch.cat([image_index, boxes], dim=1)
            cls_score, bbox_pred = head(self._roi_features(extractor, features, rois))
            logits_sum = logits_sum + cls_score
            if stage < len(stages) - 1:  # Cascade: refine by the predicted class's deltas
                deltas = _class_deltas(head, bbox_pred, cls_score[:, :-1].argmax(dim=1))
                boxes = _decode(head.bbox_coder, boxes, deltas, row_limits)
        scores = (logits_sum / len(stages)).softmax(dim=-1)[:, :-1]
        num_classes = head.num_classes
        if head.reg_class_agnostic:
            boxes = _decode(head.bbox_coder, boxes, bbox_pred.reshape(-1, 4), row_limits)
            return scores, boxes[:, None, :].expand(-1, num_classes, -1)
        deltas = bbox_pred.reshape(-1, num_classes, 4)
        repeated = boxes[:, None, :].expand(-1, num_classes, -1)
        return scores, _decode(head.bbox_coder, repeated, deltas, row_limits[:, None, :])

    def _masks(self, features: tuple[torch.Tensor, ...], dets: torch.Tensor,
               labels: torch.Tensor) -> torch.Tensor:
        """Mask probabilities (N, K, M, M) of each detection's class, averaged over stages."""
        num_images, num_dets = dets.shape[:2]
        image_index = _image_index(num_images, num_dets, dets)
        rois = torch.cat([image_index, dets[..., :4].reshape(-1, 4)], dim=1)
        flat_labels = labels.reshape(-1)
        stages = list(zip(self._stages('mask_roi_extractor'), self._stages('mask_head')))
        probabilities = 0
        for extractor, head in stages:
            mask_preds = head(self._roi_features(extractor, features, rois))
            size = mask_preds.shape[-2:]
            channel = torch.zeros_like(flat_labels) if head.class_agnostic else flat_labels
            index = channel[:, None, None, None].expand(-1, 1, size[0], size[1])
            probabilities = probabilities + mask_preds.gather(1, index)[:, 0].sigmoid()
        probabilities = probabilities / len(stages)
        return probabilities.reshape(num_images, num_dets, size[0], size[1])

    def forward(self, input: torch.Tensor,  # noqa: A002 (the ONNX name)
                img_shape: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``dets``, ``labels`` (and ``masks`` with a mask head) of a preprocessed batch and
        each image's (height, width) before padding."""
        limits = img_shape.to(input.dtype)
        features = self.features(input)
        proposals, proposal_scores = self._proposals(features, limits)
        num_images, num_proposals = proposals.shape[:2]

        scores, boxes = self._classify(features, proposals, limits)
        num_classes = scores.shape[1]
        valid = (proposal_scores > 0).reshape(-1, 1)
        scores = torch.where(valid, scores, torch.full_like(scores, -1.0))
        scores = scores.reshape(num_images, num_proposals * num_classes)
        boxes = boxes.reshape(num_images, num_proposals * num_classes, 4)
        labels = torch.arange(num_classes, device=input.device)
        labels = labels.repeat(num_proposals)[None].expand(num_images, -1)
        det_scores, index = _nms(boxes, scores, labels, self.rcnn_nms)
        det_boxes = _gather_rows(boxes, index)
        det_labels = _gather_rows(labels, index)
        det_scores = det_scores.clamp(min=0)  # padding: score 0
        dets = torch.cat([det_boxes, det_scores[..., None]], dim=-1)
        if not self.with_mask:
            return dets, det_labels
        return dets, det_labels, self._masks(features, dets, det_labels)
