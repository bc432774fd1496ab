# UperNet, ConvNeXt-T (ImageNet-1K), ADE20K 160k at 512x512.
# The base holds this recipe's values; the other configs state what differs.
_base_ = './_base_/upernet_convnext_ade20k_512_160k.py'
