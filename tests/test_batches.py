"""tests/batches.py: the test data passes through mmdet's preprocessing on either stack."""
from __future__ import annotations

import numpy as np
from mmdet.models.data_preprocessors import DetDataPreprocessor
from torch import nn

from tests.batches import mask_rcnn_batch


def test_mask_rcnn_batch_masks_are_uint8_and_pad():
    """Bool masks pad on OpenCV 5 only; the onedl stack's OpenCV 4.12 refuses them."""
    model = nn.Module()
    model.data_preprocessor = DetDataPreprocessor(
        mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True,
        pad_size_divisor=64, pad_mask=True)  # 128x160 -> 128x192: the masks are padded
    data = mask_rcnn_batch(model)
    assert data['inputs'].shape == (1, 3, 128, 192)
    masks = data['data_samples'][0].gt_instances.masks
    assert masks.masks.dtype == np.uint8
    assert masks.masks.shape == (1, 128, 192)
    assert masks.masks.sum() == 60 * 70 and masks.masks[:, :, 160:].sum() == 0
