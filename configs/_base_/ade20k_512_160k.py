# The paper's ADE20K recipe as the release ran it (facebookresearch/ConvNeXt
# semantic_segmentation/configs/convnext/upernet_convnext_*_160k_ade20k{,_ss,_ms}.py on the
# BEiT semantic-segmentation code, mmseg 0.x): UperNet, 160k iterations, 512x512 crops, AdamW
# with stage-wise lr decay, poly schedule after 1500 warm-up iterations, fp16 (the 640 L and
# XL configs train in fp32 and say so), 16 images per step (2 x 8 GPUs), seed 0;
# single-scale test with the sliding window, multi-scale + flip test on whole images.
#
# Everything but the model: each segmentor's base adds its model file and the model's
# input size and sliding-window test (mmengine allows no key twice among a list of bases).
_base_ = [
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_160k.py',
]

crop_size = (512, 512)
train_dataloader = dict(batch_size=2)
val_dataloader = dict(batch_size=1)
test_dataloader = val_dataloader

# fp16 with dynamic loss scaling (AmpOptimWrapper's default): the release's `use_fp16=True`
# (DistOptimizerHook).
optim_wrapper = dict(
    _delete_=True,
    type='AmpOptimWrapper',
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))

# The release's mmcv 1.x `lr_config`: poly over all 160k iterations, linear warm-up from
# 1e-6 x lr over the first 1500, which scales the poly lr. mmseg 1.x's usual conversion below
# starts the poly at iteration 1500 instead: the lr differs from the release's by under 1 %
# (at iteration 1500 the release is at (1 - 1500/160000) = 0.9906 x lr, here at 1.0 x lr).
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(type='PolyLR', power=1.0, eta_min=0.0, by_epoch=False, begin=1500, end=160000),
]

auto_scale_lr = dict(enable=False, base_batch_size=16)

# The release trains with `--seed 0 --deterministic` (semantic_segmentation/README.md). In
# mmseg 0.x, --deterministic set only cuDNN's flags (cudnn.deterministic=True,
# cudnn.benchmark=False). mmengine's `deterministic=True` also calls
# torch.use_deterministic_algorithms(True), under which UperNet's training raises on CUDA
# (bilinear F.interpolate backward, AdaptiveAvgPool2d backward and NLLLoss are on PyTorch's
# list of ops without a deterministic CUDA kernel; pytorch/pytorch#68961), so it is off here;
# cudnn.benchmark is off as in the release (mmseg's env_cfg).
randomness = dict(seed=0, deterministic=False)

# Multi-scale + flip test (tools/test.py --tta) as the release ran it: mmseg 0.x's
# tools/test.py --aug-test sets the test pipeline's MultiScaleFlipAug to ratios
# [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] of the test scale (2048, 512) (each image resized to fit
# (int(2048 r), int(512 r)), aspect ratio kept) plus horizontal flips, and the `_ms` configs
# infer on whole images (no sliding window). Softmax scores averaged over the 12 runs.
tta_model = dict(type='SegTTAModelWithTestCfg', test_cfg=dict(mode='whole'))
img_ratios = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
tta_scale = (2048, 512)
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
