# The paper's COCO "3x" recipe as the release ran it (facebookresearch/ConvNeXt
# object_detection/configs/convnext/*_3x_coco_*.py): 36 epochs, multi-scale training with the
# crop policy, AdamW with layer-wise lr decay, fp16 (the IN-22K L and XL configs train in
# fp32 and say so), 16 images per step (2 x 8 GPUs).
_base_ = [
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]

multi_scales = [(short, 1333) for short in range(480, 801, 32)]
train_pipeline = [
    dict(type='LoadImageFromFile', backend_args={{_base_.backend_args}}),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='RandomFlip', prob=0.5),
    # AutoAugment with two policies: (a) multi-scale resize; (b) resize, crop, resize.
    dict(
        type='AutoAugment',
        policies=[
            [dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True)],
            [
                dict(type='RandomChoiceResize',
                     scales=[(400, 1333), (500, 1333), (600, 1333)], keep_ratio=True),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=multi_scales, keep_ratio=True),
            ],
        ]),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(pipeline=train_pipeline))

max_epochs = 36
train_cfg = dict(max_epochs=max_epochs)
# The release keeps mmdet 2.x's configs/_base_/schedules/schedule_1x.py warm-up: linear over
# 500 iterations from 0.001 x lr (mmdet 3.x's own ConvNeXt port uses 1000). mmengine's LinearLR
# reaches the full lr at iteration 499 where mmcv's warm-up did at 500 (under 0.2 % apart).
param_scheduler = [
    dict(type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[27, 33],
         gamma=0.1),
]

# fp16 with dynamic loss scaling (AmpOptimWrapper's default): the release's `use_fp16=True`
# (DistOptimizerHook).
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))

auto_scale_lr = dict(enable=False, base_batch_size=16)
