"""Tiny real input batches for mmdet and mmseg models, through their data preprocessors."""
from __future__ import annotations

import torch
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmengine.structures import InstanceData, PixelData
from mmseg.structures import SegDataSample
from torch import nn


def mask_rcnn_batch(model: nn.Module, training: bool = True) -> dict:
    """One 128x160 image with one box and its mask (class 3)."""
    image = torch.randint(0, 255, (3, 128, 160), dtype=torch.uint8)
    sample = DetDataSample(metainfo=dict(img_shape=(128, 160), ori_shape=(128, 160),
                                         scale_factor=(1.0, 1.0), pad_shape=(128, 160),
                                         batch_input_shape=(128, 160)))
    # uint8, as mmdet's LoadAnnotations makes them: OpenCV < 4.13 (the onedl stack's) refuses
    # to pad bool masks (copyMakeBorder), OpenCV 5 pads either
    mask = torch.zeros(1, 128, 160, dtype=torch.uint8)
    mask[:, 20:80, 30:100] = 1
    sample.gt_instances = InstanceData(bboxes=torch.tensor([[30., 20., 100., 80.]]),
                                       labels=torch.tensor([3]),
                                       masks=BitmapMasks(mask.numpy(), 128, 160))
    return model.data_preprocessor(dict(inputs=[image], data_samples=[sample]),
                                   training=training)


def upernet_batch(model: nn.Module) -> dict:
    """Two 64x64 images with random segmentation maps over the decode head's classes."""
    images = [torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8) for _ in range(2)]
    num_classes = model.decode_head.num_classes
    samples = []
    for _ in range(2):
        sample = SegDataSample(metainfo=dict(img_shape=(64, 64), ori_shape=(64, 64),
                                             pad_shape=(64, 64)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, num_classes, (1, 64, 64)))
        samples.append(sample)
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)
