# DeepLabV3+, ConvNeXt-T at output stride 16 (only the last stage dilated): ASPP rates
# 6/12/18, half those at output stride 8, as mmseg's own output-stride-16 DeepLabV3+
# (deeplabv3plus_r101-d16-mg124_*) and the DeepLabV3 paper use. Otherwise as the OS 8 config.
_base_ = './deeplabv3plus_convnext_t_os8_ade20k_512.py'

model = dict(backbone=dict(output_stride=16), decode_head=dict(dilations=(1, 6, 12, 18)))
