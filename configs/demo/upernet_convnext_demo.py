# UperNet, ConvNeXt-atto from scratch on the built-in shapes dataset (tools/demo.py seg).
# The paper's ADE20K recipe (model family, pipeline, stage-wise lr decay, AMP wrapper,
# sliding-window test) scaled down to train on 2 CPU cores in minutes.
_base_ = '../upernet_convnext_t_ade20k_512.py'

# What tools/demo.py generates (convnext_dense.demo.data) at the datasets' data_root.
demo_dataset = dict(format='ade20k', num_train=600, num_val=50, image_size=(128, 160), seed=0)
# background + demo_data.DEMO_CLASSES, and their colours: demo_data.ade20k_metainfo()
metainfo = dict(
    classes=('background', 'circle', 'square', 'triangle', 'star', 'ring'),
    palette=[[120, 120, 120], [230, 25, 75], [60, 180, 75], [0, 130, 200], [245, 130, 48],
             [145, 30, 180]])
num_classes = 6
crop_size = (128, 160)

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(arch='atto', drop_path_rate=0.0, init_cfg=None),
    decode_head=dict(in_channels=[40, 80, 160, 320], channels=128, num_classes=num_classes),
    auxiliary_head=dict(in_channels=160, channels=64, num_classes=num_classes),
    # One window covers a whole 128x160 image (the paper: 512 windows, stride 341).
    test_cfg=dict(crop_size=crop_size, stride=(86, 107)))

# ADE20K's pipeline at the images' own scale, with a milder resize range (0.75-1.5) and
# photometric distortion for a schedule of minutes.
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(160, 128), ratio_range=(0.75, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion', brightness_delta=16, contrast_range=(0.75, 1.25),
         saturation_range=(0.75, 1.25), hue_delta=9),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 128), keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
# The recipe's multi-scale + flip test (--tta: ratios 0.5..1.75, whole images) at this scale.
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_scale = (160, 128)
tta_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='TestTimeAug', transforms=[
        [dict(type='Resize', scale=(int(tta_scale[0] * r), int(tta_scale[1] * r)),
              keep_ratio=True) for r in img_ratios],
        [dict(type='RandomFlip', prob=0.0, direction='horizontal'),
         dict(type='RandomFlip', prob=1.0, direction='horizontal')],
        [dict(type='LoadAnnotations')],
        [dict(type='PackSegInputs')],
    ]),
]
dataset = dict(type='BaseSegDataset', data_root='data/demo/ade20k', img_suffix='.jpg',
               seg_map_suffix='.png', reduce_zero_label=True, metainfo=metainfo)
train_dataloader = dict(
    batch_size=8, num_workers=1, persistent_workers=True,
    dataset=dict(dataset, pipeline=train_pipeline,
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training')))
val_dataloader = dict(
    num_workers=0, persistent_workers=False,
    dataset=dict(dataset, pipeline=test_pipeline,
                 data_prefix=dict(img_path='images/validation',
                                  seg_map_path='annotations/validation')))
test_dataloader = val_dataloader

# From scratch: a higher lr than the fine-tuning recipe's 1e-4 (batch 8 instead of 16).
max_iters = 1000
train_cfg = dict(max_iters=max_iters, val_interval=250)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=100),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=100, end=max_iters),
]
optim_wrapper = dict(optimizer=dict(lr=2e-3))

default_hooks = dict(logger=dict(interval=50),
                     checkpoint=dict(interval=max_iters, max_keep_ckpts=1))
log_processor = dict(window_size=50)
randomness = dict(seed=0)
