# Cascade Mask R-CNN, ConvNeXt-B (ImageNet-1K), COCO 3x.
_base_ = './cascade_mask_rcnn_convnext_t_coco.py'

model = dict(
    backbone=dict(
        arch='base', drop_path_rate=0.7,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, num_layers=12))
