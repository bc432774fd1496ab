# Mask R-CNN, ConvNeXt-atto from scratch on the built-in shapes dataset (tools/demo.py det).
# The paper's recipe (model family, crop-policy AutoAugment, layer-wise lr decay, AMP wrapper)
# scaled down to train on 2 CPU cores in minutes: small backbone and heads, 128x160
# images, anchors and RoI levels moved one octave down for the small objects (18-50 px).
_base_ = '../mask_rcnn_convnext_t_coco.py'

# What tools/demo.py generates (convnext_dense.demo.data) at the datasets' data_root.
demo_dataset = dict(format='coco', num_train=600, num_val=50, image_size=(128, 160), seed=0)
classes = ('circle', 'square', 'triangle', 'star', 'ring')  # demo_data.DEMO_CLASSES
num_classes = len(classes)
channels = 64

model = dict(
    backbone=dict(arch='atto', drop_path_rate=0.0, init_cfg=None),
    neck=dict(in_channels=[40, 80, 160, 320], out_channels=channels),
    # Anchors of 16..256 px (COCO: 32..512) and RoIs below 56 px on P2 (COCO: below 112 px).
    rpn_head=dict(in_channels=channels, feat_channels=channels,
                  anchor_generator=dict(scales=[4])),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=channels, finest_scale=28),
        bbox_head=dict(in_channels=channels, fc_out_channels=256, num_classes=num_classes),
        mask_roi_extractor=dict(out_channels=channels, finest_scale=28),
        mask_head=dict(in_channels=channels, conv_out_channels=channels,
                       num_classes=num_classes)),
    train_cfg=dict(
        rpn_proposal=dict(nms_pre=1000, max_per_img=500),
        rcnn=dict(sampler=dict(num=128))),
    test_cfg=dict(rpn=dict(nms_pre=500, max_per_img=300)))

# The crop policy at 1/6 of COCO's sizes (the test scale is the images' own 128x160); with only
# minutes to train, the crop branch is drawn for 1 image in 4 (COCO: 1 in 2).
multi_scales = [(short, 213) for short in range(112, 161, 16)]
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='AutoAugment',
        prob=[0.75, 0.25],
        policies=[
            [dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize',
                     scales=[(96, 213), (112, 213), (128, 213)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(80, 128),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]

data_root = 'data/demo/coco/'
train_dataloader = dict(
    batch_size=4, num_workers=1, persistent_workers=True,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes),
                 ann_file='annotations/instances_train.json', data_prefix=dict(img='train/'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=dict(classes=classes),
                 ann_file='annotations/instances_val.json', data_prefix=dict(img='val/'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# From scratch: a higher lr than the fine-tuning recipe's 1e-4 (batch 4 instead of 16).
max_epochs = 8
train_cfg = dict(max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=100),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[6, 7],
         gamma=0.1),
]
optim_wrapper = dict(optimizer=dict(lr=1e-3))

default_hooks = dict(logger=dict(interval=50), checkpoint=dict(interval=max_epochs,
                                                               max_keep_ckpts=1))
log_processor = dict(window_size=50)
randomness = dict(seed=0)
