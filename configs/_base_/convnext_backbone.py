# The ConvNeXt backbone as every detection/segmentation recipe of the paper uses it
# (./convnext_backbone_dict.py), and the import that registers it.
_base_ = './convnext_backbone_dict.py'

custom_imports = dict(imports=['convnext_dense'], allow_failed_imports=False)
