# UperNet, ConvNeXt-L (ImageNet-22K), ADE20K 160k at 640x640.
_base_ = './upernet_convnext_b_in22k_ade20k_640.py'

model = dict(
    backbone=dict(
        arch='large',
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_large_22k_224.pth')),
    decode_head=dict(in_channels=[192, 384, 768, 1536]),
    auxiliary_head=dict(in_channels=768))
# fp32: the release trains L and XL (640) with `use_fp16=False`
# (upernet_convnext_{large,xlarge}_640_160k_ade20k.py); `train.py --amp` for fp16.
optim_wrapper = dict(type='OptimWrapper')
