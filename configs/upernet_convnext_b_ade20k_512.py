# UperNet, ConvNeXt-B (ImageNet-1K), ADE20K 160k at 512x512.
_base_ = './upernet_convnext_t_ade20k_512.py'

model = dict(
    backbone=dict(
        arch='base',
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_base_1k_224.pth')),
    decode_head=dict(in_channels=[128, 256, 512, 1024]),
    auxiliary_head=dict(in_channels=512))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
