# mmdet's DINO (4 scales, 12 epochs: mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py, its model,
# data pipeline and schedule) with the ConvNeXt backbone; the configs set its stages.
_base_ = ['mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py', './convnext_backbone.py']

model = dict(backbone={{_base_.convnext_backbone}}, neck=dict(in_channels=[192, 384, 768]))
