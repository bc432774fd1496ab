# UperNet, ConvNeXt-S (ImageNet-1K), ADE20K 160k at 512x512.
_base_ = './upernet_convnext_t_ade20k_512.py'

model = dict(backbone=dict(
    arch='small', drop_path_rate=0.3,
    init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_small_1k_224.pth')))
optim_wrapper = dict(paramwise_cfg=dict(num_layers=12))
