# DeepLabV3+, ConvNeXt-T (ImageNet-1K) dilated to output stride 8, ADE20K 160k at 512x512.
# The head and its settings are mmseg's reference DeepLabV3+ (_base_/models/
# deeplabv3plus_convnext.py); the backbone and the training recipe are the paper's UperNet-T
# ADE20K recipe (_base_/ade20k_512_160k.py: drop path 0.4, AdamW lr 1e-4, stage-wise decay
# 0.9 over 6 layers, poly after 1500 warm-up iterations, fp16, 2 x 8 images, sliding-window
# test). The paper published no DeepLab recipe: using its UperNet recipe unchanged, not
# mmseg's SGD schedule for ResNet DeepLabV3+, is this project's choice.
_base_ = ['./_base_/models/deeplabv3plus_convnext.py', './_base_/ade20k_512_160k.py']

crop_size = (512, 512)
model = dict(
    backbone=dict(output_stride=8),
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
