# Mask2Former, ConvNeXt-T (ImageNet-1K), ADE20K semantic segmentation, 160k at 512x512.
# The head and its settings are mmseg's reference Mask2Former (_base_/mask2former_convnext_
# ade20k_512_160k.py: 100 queries, the multi-scale deformable pixel decoder, 9 decoder
# layers, gradient clipping at 0.01, query and level embeddings without weight decay, poly
# schedule with power 0.9 and no warm-up, fp32, whole-image test). Backbone hyper-parameters
# follow the paper's UperNet-T ADE20K recipe (drop path 0.4, AdamW with weight decay 0.05,
# stage-wise lr decay 0.9 over 6 layers) in place of Mask2Former's 0.1 lr multiplier on the
# backbone; lr 1e-4 is both Mask2Former's and the paper's. The paper published no Mask2Former
# recipe: this combination is this project's choice.
_base_ = './_base_/mask2former_convnext_ade20k_512_160k.py'

embed_multi = dict(lr_mult=1.0, decay_mult=0.0)
optim_wrapper = dict(
    constructor='ConvNeXtLayerDecayOptimizerConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(
        _delete_=True, decay_rate=0.9, decay_type='stage_wise', num_layers=6,
        custom_keys=dict(query_embed=embed_multi, query_feat=embed_multi,
                         level_embed=embed_multi)))
