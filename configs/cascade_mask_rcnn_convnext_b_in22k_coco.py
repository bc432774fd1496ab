# Cascade Mask R-CNN, ConvNeXt-B (ImageNet-22K), COCO 3x.
_base_ = './cascade_mask_rcnn_convnext_b_coco.py'

model = dict(backbone=dict(
    drop_path_rate=0.6,
    init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_22k_224.pth')))
optim_wrapper = dict(optimizer=dict(lr=1e-4))
