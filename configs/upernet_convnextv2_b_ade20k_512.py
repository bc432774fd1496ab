# UperNet, ConvNeXt V2-B (FCMAE pre-trained, ImageNet-1K fine-tuned), ADE20K 160k at 512x512.
# The paper's (V1) UperNet-B recipe with the V2 backbone (see upernet_convnextv2_t_ade20k_512.py).
_base_ = './upernet_convnext_b_ade20k_512.py'

model = dict(
    backbone=dict(
        use_grn=True, layer_scale_init_value=0.0,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_base_1k_224_ema.pt')))
