# DINO (4 scales), ConvNeXt-T (ImageNet-1K), COCO 12 epochs.
# The head and its settings are mmdet's reference DINO (_base_/dino_4scale_convnext_coco_12e.py:
# 900 queries, 6+6 deformable layers, ChannelMapper to 256 channels with one extra level,
# DETR-style augmentation, 12 epochs with a step at 11, gradient clipping at 0.1). The
# backbone gives stages 1-3 (strides 8/16/32, 192/384/768 channels); the mapper adds the
# stride-64 level. Backbone hyper-parameters follow the paper's Mask R-CNN-T recipe (drop path
# 0.4, AdamW with weight decay 0.05, layer-wise lr decay 0.95 over 6 layers) in place of
# DINO's 0.1 lr multiplier on the backbone; lr 1e-4 is both DINO's and the paper's. The paper
# published no DETR recipe: this combination is this project's choice.
_base_ = './_base_/dino_4scale_convnext_coco_12e.py'

model = dict(backbone=dict(out_indices=(1, 2, 3)))
optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(_delete_=True, decay_rate=0.95, decay_type='layer_wise', num_layers=6))
