# Cascade Mask R-CNN (GIoU, 4conv1fc heads), ConvNeXt-T (ImageNet-1K), COCO 3x.
_base_ = [
    './_base_/models/cascade_mask_rcnn_convnext_fpn_giou_4conv1fc.py',
    './_base_/coco_instance_ms_crop_3x.py',
]

optim_wrapper = dict(optimizer=dict(lr=2e-4), paramwise_cfg=dict(decay_rate=0.7))
