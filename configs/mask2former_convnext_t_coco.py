# Mask2Former, ConvNeXt-T (ImageNet-1K), COCO instance segmentation, 50 epochs.
# The head and its settings are mmdet's reference Mask2Former (_base_/mask2former_convnext_coco_
# 50e.py: 100 queries, the multi-scale deformable pixel decoder, 9 decoder layers, point-sampled
# mask losses, gradient clipping at 0.01, query and level embeddings without weight decay).
# Backbone hyper-parameters follow the paper's Mask R-CNN-T recipe (drop path 0.4, AdamW with
# weight decay 0.05, layer-wise lr decay 0.95 over 6 layers) in place of Mask2Former's 0.1 lr
# multiplier on the backbone; lr 1e-4 is both Mask2Former's and the paper's. The layer-decay
# rule gives every 1-D parameter (norms, biases) weight decay 0, as Mask2Former's
# norm_decay_mult=0 does for norms. The paper published no Mask2Former recipe: this
# combination is this project's choice.
_base_ = './_base_/mask2former_convnext_coco_50e.py'

embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        _delete_=True, decay_rate=0.95, decay_type='layer_wise', num_layers=6,
        custom_keys=dict(query_embed=embed_multi, query_feat=embed_multi,
                         level_embed=embed_multi)))
