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
- :class:`Mask2FormerDetectorExport` (mmdet ``Mask2Former`` in instance mode):
  ``forward(input, img_shape)`` returns ``dets`` (N, K, 5), ``labels`` (N, K) and ``masks``
  (N, K, H, W) float32 mask probabilities at the input size, 0 on the padding, as mmdet's
  ``MaskFormerFusionHead.instance_postprocess`` computes them on the input
  (``predict(rescale=False)``): the best K = ``max_per_image`` of the class probabilities over
  queries x classes, each one's mask logits resized to the input; mmdet's mask is where the
  probability is above 0.5 (logit above 0) inside the image's ``img_shape``; the score is the
  class probability times the mean mask probability inside the mask, the box is around the
  mask. Only instance results are exported (:func:`check_mask2former`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .detection import _gather_rows
from .errors import refuse_detector
from .features import FeaturesExport
from .msda import gather_sampler
from .ops import exportable_copy
from .segmentation import SegmentorExport

#: the fusion head's ``test_cfg`` keys the instance graph honours, and those that only the
#: panoptic results read (they change nothing in instance mode)
INSTANCE_TEST_KEYS = ('instance_on', 'max_per_image')
PANOPTIC_ONLY_TEST_KEYS = ('iou_thr', 'filter_low_score', 'object_mask_thr')


def _mask_logits_at(mask_preds: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N, Q, h, w) mask logits resized bilinearly (``align_corners=False``) to ``like``'s
    (height, width), as mmdet's and mmseg's Mask2Former post-processing resizes them."""
    return F.interpolate(mask_preds, size=like.shape[-2:], mode='bilinear', align_corners=False)


class Mask2FormerSegmentorExport(SegmentorExport):
    """Whole-image inference of an mmseg ``EncoderDecoder`` with a ``Mask2FormerHead`` up to
    ``seg_logits`` at the input size (mmseg's ``Mask2FormerHead.predict``).

    ``forward(input)`` takes the batch as the data preprocessor makes it (N, 3, H, W) and
    returns (N, num_classes, H, W) float32 class scores.
    """

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 (the ONNX name)
        features = self.features(input)
        with gather_sampler():
            # the head reads nothing from the data samples but the batch size (from x)
            cls_scores, mask_preds = self.decode_head(features, [])
        cls_probs = F.softmax(cls_scores[-1], dim=-1)[..., :-1]
        mask_probs = _mask_logits_at(mask_preds[-1], input).sigmoid()
        return torch.einsum('bqc,bqhw->bchw', cls_probs, mask_probs)


def mask2former_problems(detector: nn.Module) -> list[str]:
    """Each setting of an mmdet ``Mask2Former`` that :class:`Mask2FormerDetectorExport` does
    not compute as mmdet's ``predict`` does, named by its config key with the reason."""
    problems = []
    test_cfg = detector.test_cfg or {}
    for key, default in (('panoptic_on', True), ('semantic_on', False)):
        if test_cfg.get(key, default):
            problems.append(f'model.test_cfg.{key}=True: the exported graph gives instance '
                            'results only (dets, labels, masks); set it to False')
    if not test_cfg.get('instance_on', False):
        problems.append('model.test_cfg.instance_on=False: the exported graph gives the '
                        'instance results; set it to True')
    for key in test_cfg:
        if key not in INSTANCE_TEST_KEYS + PANOPTIC_ONLY_TEST_KEYS + ('panoptic_on',
                                                                       'semantic_on'):
            problems.append(f'model.test_cfg.{key}: not computed by the exported graph (it '
                            f'honours {", ".join(INSTANCE_TEST_KEYS)})')
    fusion = detector.panoptic_fusion_head
    if fusion.num_stuff_classes:
        problems.append(f'model.panoptic_fusion_head.num_stuff_classes='
                        f'{fusion.num_stuff_classes}: mmdet drops the stuff classes from the '
                        'instance results, a number per image that the exported graph (a '
                        'fixed max_per_image) does not give; things-only models export')
    candidates = detector.panoptic_head.num_queries * fusion.num_classes
    max_per_image = test_cfg.get('max_per_image', 100)
    if not 1 <= int(max_per_image) <= candidates:
        problems.append(f'model.test_cfg.max_per_image={max_per_image!r}: the exported graph '
                        f'keeps 1 to num_queries x num_classes ({candidates}) instances')
    return problems


def check_mask2former(detector: nn.Module) -> None:
    """Refuse a Mask2Former whose settings the exported instance graph would not honour.

    Raises:
        ExportError: naming each such setting (its config key) and why.
    """
    refuse_detector(mask2former_problems(detector))


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """mmdet's ``mask2bbox`` for (..., H, W) bool masks: (..., 4) float boxes (x1, y1, x2 + 1,
    y2 + 1) around each mask, zeros for an empty one."""
    height, width = masks.shape[-2:]
    filled = masks.to(torch.float32)
    columns = filled.amax(dim=-2) > 0  # (..., W)
    rows = filled.amax(dim=-1) > 0  # (..., H)
    x = torch.arange(width, device=masks.device)
    y = torch.arange(height, device=masks.device)
    x1 = torch.where(columns, x, width).amin(dim=-1)
    x2 = torch.where(columns, x + 1, 0).amax(dim=-1)
    y1 = torch.where(rows, y, height).amin(dim=-1)
    y2 = torch.where(rows, y + 1, 0).amax(dim=-1)
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).to(torch.float32)
    empty = ~(columns.any(dim=-1))
    return torch.where(empty[..., None], torch.zeros_like(boxes), boxes)


class Mask2FormerDetectorExport(FeaturesExport):
    """Test-time forward of an mmdet ``Mask2Former`` in instance mode, export-ready (see the
    module docstring).

    Raises:
        ExportError: a setting the graph does not compute (:func:`check_mask2former`).
    """

    def __init__(self, detector: nn.Module) -> None:
        check_mask2former(detector)
        detector = exportable_copy(detector)
        super().__init__(detector)
        self.panoptic_head = detector.panoptic_head
        self.max_per_image = int((detector.test_cfg or {}).get('max_per_image', 100))

    def forward(self, input: torch.Tensor,  # noqa: A002 (the ONNX name)
                img_shape: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``dets``, ``labels`` and ``masks`` of a preprocessed batch and each image's
        (height, width) before padding."""
        features = self.features(input)
        with gather_sampler():
            cls_scores, mask_preds = self.panoptic_head(features, [])
        probabilities = F.softmax(cls_scores[-1], dim=-1)[..., :-1]
        num_classes = probabilities.shape[-1]
        scores, index = probabilities.flatten(1).topk(self.max_per_image, dim=1)
        labels = index % num_classes
        queries = torch.div(index, num_classes, rounding_mode='floor')
        logits = _gather_rows(_mask_logits_at(mask_preds[-1], input), queries)  # (N, K, H, W)
        height, width = input.shape[-2:]
        rows = torch.arange(height, device=input.device)[None, None, :, None]
        cols = torch.arange(width, device=input.device)[None, None, None, :]
        inside = (rows < img_shape[:, 0, None, None, None]) & (
            cols < img_shape[:, 1, None, None, None])
        masks = (logits > 0) & inside
        filled = masks.to(logits.dtype)
        probabilities = logits.sigmoid() * inside.to(logits.dtype)
        mask_scores = (probabilities * filled).flatten(2).sum(2) / (
            filled.flatten(2).sum(2) + 1e-6)
        dets = torch.cat([mask_boxes(masks), (scores * mask_scores)[..., None]], dim=-1)
        return dets, labels, probabilities
