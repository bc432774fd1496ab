# Cascade Mask R-CNN, ConvNeXt-L (ImageNet-22K), COCO 3x.
_base_ = './cascade_mask_rcnn_convnext_b_in22k_coco.py'

model = dict(
    backbone=dict(
        arch='large', drop_path_rate=0.7,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth')),
    neck=dict(in_channels=[192, 384, 768, 1536]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.7))
