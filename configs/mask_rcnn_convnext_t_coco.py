# Mask R-CNN, ConvNeXt-T (ImageNet-1K), COCO 3x with multi-scale + crop training.
# The bases hold this recipe's values; the other configs state what differs.
_base_ = ['./_base_/models/mask_rcnn_convnext_fpn.py', './_base_/coco_instance_ms_crop_3x.py']
