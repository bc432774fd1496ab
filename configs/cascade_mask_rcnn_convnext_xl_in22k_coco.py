# Cascade Mask R-CNN, ConvNeXt-XL (ImageNet-22K), COCO 3x, fp32 as L.
_base_ = './cascade_mask_rcnn_convnext_l_in22k_coco.py'

model = dict(
    backbone=dict(
        arch='xlarge', drop_path_rate=0.8,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_xlarge_22k_224.pth')),
    neck=dict(in_channels=[256, 512, 1024, 2048]))
