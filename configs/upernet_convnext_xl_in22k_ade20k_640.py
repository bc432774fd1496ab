# UperNet, ConvNeXt-XL (ImageNet-22K), ADE20K 160k at 640x640, fp32 as L.
_base_ = './upernet_convnext_l_in22k_ade20k_640.py'

model = dict(
    backbone=dict(
        arch='xlarge',
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_xlarge_22k_224.pth')),
    decode_head=dict(in_channels=[256, 512, 1024, 2048]),
    auxiliary_head=dict(in_channels=1024))
optim_wrapper = dict(optimizer=dict(lr=8e-5))
