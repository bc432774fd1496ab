_base_ = ['mmseg::_base_/models/upernet_r50.py', '../convnext_backbone.py']

model = dict(
    pretrained=None,
    backbone={{_base_.convnext_backbone}},
    decode_head=dict(in_channels=[96, 192, 384, 768], num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
