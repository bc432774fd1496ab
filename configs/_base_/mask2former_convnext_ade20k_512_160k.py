# mmseg's Mask2Former for ADE20K semantic segmentation (mmseg::mask2former/
# mask2former_r50_8xb2-160k_ade20k-512x512.py: its model, its pipeline (short side resized to
# 256-1024, 512x512 crops), 2 x 8 images, 160k iterations of poly decay, whole-image test) with
# the ConvNeXt backbone; the pixel decoder reads all four stages, the configs set the
# backbone's size. That base imports mmdet's models (the head is mmdet's); custom_imports
# here adds this package, so the backbone comes without its own import line.
_base_ = ['mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py',
          './convnext_backbone_dict.py']

custom_imports = dict(imports=['mmdet.models', 'convnext_dense'], allow_failed_imports=False)
model = dict(backbone={{_base_.convnext_backbone}},
             decode_head=dict(in_channels=[96, 192, 384, 768]))
