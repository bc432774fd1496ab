# The ConvNeXt backbone as every detection/segmentation recipe of the paper uses it, without
# the import that registers it: for bases that set `custom_imports` themselves (mmengine
# allows no key twice among a config's bases). Everything else takes ./convnext_backbone.py.
convnext_backbone = dict(
    _delete_=True,
    type='ConvNeXt',
    arch='tiny',
    out_indices=(0, 1, 2, 3),
    drop_path_rate=0.4,
    layer_scale_init_value=1.0,
    # The paper's official ImageNet-1K checkpoint, loaded unconverted: convnext_dense
    # converts official/timm/mmpretrain layouts in memory.
    init_cfg=dict(type='Pretrained',
                  checkpoint='https://dl.fbaipublicfiles.com/convnext/convnext_tiny_1k_224.pth'))
