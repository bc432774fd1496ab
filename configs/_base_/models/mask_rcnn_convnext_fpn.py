_base_ = ['mmdet::_base_/models/mask-rcnn_r50_fpn.py', '../convnext_backbone.py']

model = dict(backbone={{_base_.convnext_backbone}}, neck=dict(in_channels=[96, 192, 384, 768]))
