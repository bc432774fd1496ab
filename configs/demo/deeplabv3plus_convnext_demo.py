# DeepLabV3+, ConvNeXt-atto at output stride 16, from scratch on the built-in shapes dataset
# (tools/demo.py deeplab): the UperNet demo (data, pipeline, schedule, recipe, FCN auxiliary
# head) with the decode head of configs/deeplabv3plus_convnext_t_os16_ade20k_512.py (mmseg's
# DepthwiseSeparableASPPHead, rates 1/6/12/18 at output stride 16, a shortcut from stage 0),
# its channels scaled down as the UperNet demo's (512 -> 128, shortcut 48 -> 24). The head is
# written out: mmengine cannot take one key of another config's model.
_base_ = './upernet_convnext_demo.py'

model = dict(
    backbone=dict(output_stride=16),
    decode_head=dict(
        _delete_=True,
        type='DepthwiseSeparableASPPHead',
        in_channels=320,
        in_index=3,
        channels=128,
        dilations=(1, 6, 12, 18),
        c1_in_channels=40,
        c1_channels=24,
        dropout_ratio=0.1,
        num_classes={{_base_.num_classes}},
        norm_cfg=dict(type='SyncBN', requires_grad=True),
        align_corners=False,
        loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)))
