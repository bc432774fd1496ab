# mmdet's Mask2Former for COCO instance segmentation (mmdet::mask2former/
# mask2former_r50_8xb2-lsj-50e_coco.py: its model, large-scale jittering to 1024x1024 crops,
# 2 x 8 images and the 50-epoch schedule of 368750 iterations) with the ConvNeXt backbone;
# the pixel decoder reads all four stages (strides 4-32), the configs set the backbone's size.
_base_ = ['mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py', './convnext_backbone.py']

model = dict(backbone={{_base_.convnext_backbone}},
             panoptic_head=dict(in_channels=[96, 192, 384, 768]))
