# Cascade Mask R-CNN, ConvNeXt-L (ImageNet-22K), COCO 3x.
_base_ = './cascade_mask_rcnn_convnext_b_in22k_coco.py'

model = dict(
    backbone=dict(
        arch='large', drop_path_rate=0.7,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
# fp32: the release trains L and XL (IN-22K) with `use_fp16=False`
# (cascade_mask_rcnn_convnext_{large,xlarge}_..._3x_coco_in22k.py); `train.py --amp` for fp16.
optim_wrapper = dict(type='OptimWrapper', paramwise_cfg=dict(decay_rate=0.7))
