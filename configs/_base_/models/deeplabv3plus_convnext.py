# DeepLabV3+ (mmseg's DepthwiseSeparableASPPHead, its reference settings from
# mmseg::_base_/models/deeplabv3plus_r50-d8.py: 512 channels, ASPP rates 12/24/36 at output
# stride 8, a 48-channel shortcut from the stride-4 feature, FCN auxiliary head with weight
# 0.4) on the ConvNeXt backbone; the configs set its output stride. The ASPP head reads
# stage 3 (768 channels for T), the shortcut stage 0 (96), the auxiliary head stage 2 (384).
_base_ = ['mmseg::_base_/models/deeplabv3plus_r50-d8.py', '../convnext_backbone.py']

model = dict(
    pretrained=None,
    backbone={{_base_.convnext_backbone}},
    decode_head=dict(in_channels=768, c1_in_channels=96, num_classes=150),
    auxiliary_head=dict(in_channels=384, num_classes=150))
