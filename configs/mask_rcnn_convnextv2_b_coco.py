# Mask R-CNN, ConvNeXt V2-B (FCMAE pre-trained, ImageNet-1K fine-tuned), COCO 3x.
# As mask_rcnn_convnextv2_t_coco.py; the B backbone's drop path (0.7) and layer-wise decay
# (0.8 over 12 layers) are the paper's (V1) Cascade Mask R-CNN-B ImageNet-1K recipe, the only
# B detection recipe it published; lr stays Mask R-CNN's 1e-4. This project's choice.
_base_ = './mask_rcnn_convnextv2_t_coco.py'

model = dict(
    backbone=dict(
        arch='base', drop_path_rate=0.7,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt')),
    neck=dict(in_channels=[128, 256, 512, 1024]))
optim_wrapper = dict(paramwise_cfg=dict(decay_rate=0.8, num_layers=12))
