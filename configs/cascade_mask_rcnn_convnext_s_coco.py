# Cascade Mask R-CNN, ConvNeXt-S (ImageNet-1K), COCO 3x.
_base_ = './cascade_mask_rcnn_convnext_t_coco.py'

model = dict(backbone=dict(
    arch='small', drop_path_rate=0.6,
    init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_small_1k_224.pth')))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
