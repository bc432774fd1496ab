# UperNet, ConvNeXt V2-T (FCMAE pre-trained, ImageNet-1K fine-tuned), ADE20K 160k at 512x512.
# The V2 backbone: GRN in every block and no layer scale, from the V2 release's fine-tuned
# weights; its FCMAE pre-training file (.../convnextv2/pt_only/convnextv2_tiny_1k_224_fcmae.pt)
# loads the same way (its sparse layout is detected). The V2 paper published no segmentation
# config: the rest is the paper's (V1) UperNet-T recipe unchanged, this project's choice.
# GRN's gamma and beta get no weight decay (the layer-decay rule, as the V2 release's
# optim_factory.py).
_base_ = './upernet_convnext_t_ade20k_512.py'

model = dict(
    backbone=dict(
        use_grn=True, layer_scale_init_value=0.0,
        init_cfg=dict(checkpoint='https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/convnextv2_tiny_1k_224_ema.pt')))
