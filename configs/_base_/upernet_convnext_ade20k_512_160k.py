# UperNet ConvNeXt on the paper's ADE20K recipe (./ade20k_512_160k.py): the release's
# semantic_segmentation/configs/convnext/upernet_convnext_*_160k_ade20k*.py.
_base_ = ['./models/upernet_convnext.py', './ade20k_512_160k.py']

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    test_cfg=dict(mode='slide', crop_size=crop_size, stride=(341, 341)))
