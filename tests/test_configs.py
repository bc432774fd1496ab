"""configs/: every config builds, matches the paper's recipe and model size; tool behaviour."""
from __future__ import annotations

import copy
import functools
import re
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import DefaultScope

from convnext_dense.apis.complexity import build_model, model_complexity
from convnext_dense.apis.runner import (
    DatasetNotFoundError,
    check_datasets,
    fit_dist_backend_to_device,
    fit_optim_wrapper_to_device,
    prepare_test_cfg,
    prepare_train_cfg,
    set_randomness,
)
from convnext_dense.apis.toolbox import toolbox_of
from convnext_dense.stack import current_stack
from tests.conftest import load_packaged_config, load_tool

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / 'configs'
OFFICIAL = 'https://dl.fbaipublicfiles.com/convnext/'

# The paper's recipes (NOTES): arch, drop path, lr, decay type/rate, num_layers, checkpoint,
# and its reported parameter counts (millions).
RECIPES = {
    'mask_rcnn_convnext_t_coco.py':
        ('tiny', 0.4, 1e-4, 'layer_wise', 0.95, 6, 'convnext_tiny_1k_224.pth', 48),
    'cascade_mask_rcnn_convnext_t_coco.py':
        ('tiny', 0.4, 2e-4, 'layer_wise', 0.7, 6, 'convnext_tiny_1k_224.pth', 86),
    'cascade_mask_rcnn_convnext_s_coco.py':
        ('small', 0.6, 2e-4, 'layer_wise', 0.7, 12, 'convnext_small_1k_224.pth', 108),
    'cascade_mask_rcnn_convnext_b_coco.py':
        ('base', 0.7, 2e-4, 'layer_wise', 0.8, 12, 'convnext_base_1k_224.pth', 146),
    'cascade_mask_rcnn_convnext_b_in22k_coco.py':
        ('base', 0.6, 1e-4, 'layer_wise', 0.8, 12, 'convnext_base_22k_224.pth', 146),
    'cascade_mask_rcnn_convnext_l_in22k_coco.py':
        ('large', 0.7, 1e-4, 'layer_wise', 0.7, 12, 'convnext_large_22k_224.pth', 255),
    'cascade_mask_rcnn_convnext_xl_in22k_coco.py':
        ('xlarge', 0.8, 1e-4, 'layer_wise', 0.7, 12, 'convnext_xlarge_22k_224.pth', 407),
    'upernet_convnext_t_ade20k_512.py':
        ('tiny', 0.4, 1e-4, 'stage_wise', 0.9, 6, 'convnext_tiny_1k_224.pth', 60),
    'upernet_convnext_s_ade20k_512.py':
        ('small', 0.3, 1e-4, 'stage_wise', 0.9, 12, 'convnext_small_1k_224.pth', 82),
    'upernet_convnext_b_ade20k_512.py':
        ('base', 0.4, 1e-4, 'stage_wise', 0.9, 12, 'convnext_base_1k_224.pth', 122),
    'upernet_convnext_b_in22k_ade20k_640.py':
        ('base', 0.4, 1e-4, 'stage_wise', 0.9, 12, 'convnext_base_22k_224.pth', 122),
    'upernet_convnext_l_in22k_ade20k_640.py':
        ('large', 0.4, 1e-4, 'stage_wise', 0.9, 12, 'convnext_large_22k_224.pth', 235),
    'upernet_convnext_xl_in22k_ade20k_640.py':
        ('xlarge', 0.4, 8e-5, 'stage_wise', 0.9, 12, 'convnext_xlarge_22k_224.pth', 391),
}


# What the official release ran, per config (issue #14), read from its files:
# - facebookresearch/ConvNeXt object_detection/configs/convnext/*_3x_coco_in{1k,22k}.py and
#   semantic_segmentation/configs/convnext/upernet_convnext_*_160k_ade20k{,_ms,_ss}.py:
#   optimizer_config.use_fp16 (False only for the IN-22K L/XL detectors and the 640 L/XL
#   segmentors), lr_config (segmentation: linear warm-up 1500 iterations from 1e-6, poly), and
#   test_cfg (the `_ms` configs have none: mode='whole' from _base_/models/upernet_convnext.py);
# - mmdet 2.x configs/_base_/schedules/schedule_1x.py, which the detection configs inherit
#   (Swin-Transformer-Object-Detection@6a979e2): linear warm-up 500 iterations from 0.001;
# - semantic_segmentation/README.md: training with `--seed 0 --deterministic`;
# - mmseg 0.x tools/test.py --aug-test: img_ratios [0.5, 0.75, 1.0, 1.25, 1.5, 1.75] and flip,
#   applied to the test pipeline's MultiScaleFlipAug img_scale (2048, 512), or (2560, 640) in
#   _base_/datasets/ade20k_640x640.py (the BEiT code the release builds on).
RELEASE_RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
DET_WARMUP, SEG_WARMUP = (500, 0.001), (1500, 1e-6)
# name: (warm-up (iterations, start factor), trained in fp16, seed, TTA test scale or None)
RELEASE = {
    'mask_rcnn_convnext_t_coco.py': (DET_WARMUP, True, None, None),
    'cascade_mask_rcnn_convnext_t_coco.py': (DET_WARMUP, True, None, None),
    'cascade_mask_rcnn_convnext_s_coco.py': (DET_WARMUP, True, None, None),
    'cascade_mask_rcnn_convnext_b_coco.py': (DET_WARMUP, True, None, None),
    'cascade_mask_rcnn_convnext_b_in22k_coco.py': (DET_WARMUP, True, None, None),
    'cascade_mask_rcnn_convnext_l_in22k_coco.py': (DET_WARMUP, False, None, None),
    'cascade_mask_rcnn_convnext_xl_in22k_coco.py': (DET_WARMUP, False, None, None),
    'upernet_convnext_t_ade20k_512.py': (SEG_WARMUP, True, 0, (2048, 512)),
    'upernet_convnext_s_ade20k_512.py': (SEG_WARMUP, True, 0, (2048, 512)),
    'upernet_convnext_b_ade20k_512.py': (SEG_WARMUP, True, 0, (2048, 512)),
    'upernet_convnext_b_in22k_ade20k_640.py': (SEG_WARMUP, True, 0, (2560, 640)),
    'upernet_convnext_l_in22k_ade20k_640.py': (SEG_WARMUP, False, 0, (2560, 640)),
    'upernet_convnext_xl_in22k_ade20k_640.py': (SEG_WARMUP, False, 0, (2560, 640)),
}


# Configs beyond the paper's (issue #17): other heads and ConvNeXt V2 backbones. Each keeps
# the paper's backbone and training recipe of the config named but for the backbone
# arguments listed, and has the parameter count tools/get_flops.py gives (the README's row;
# millions).
V2_IM1K = 'https://dl.fbaipublicfiles.com/convnext/convnextv2/im1k/'


def v2_backbone(size: str) -> dict:
    return dict(use_grn=True, layer_scale_init_value=0.0,
                init_cfg=dict(type='Pretrained',
                              checkpoint=f'{V2_IM1K}convnextv2_{size}_1k_224_ema.pt'))


OTHER_CONFIGS = {
    'deeplabv3plus_convnext_t_os8_ade20k_512.py':
        ('upernet_convnext_t_ade20k_512.py', dict(output_stride=8), 43.2),
    'deeplabv3plus_convnext_t_os16_ade20k_512.py':
        ('upernet_convnext_t_ade20k_512.py', dict(output_stride=16), 43.2),
    'mask_rcnn_convnextv2_t_coco.py': ('mask_rcnn_convnext_t_coco.py', v2_backbone('tiny'), 48.1),
    'mask_rcnn_convnextv2_b_coco.py':
        ('cascade_mask_rcnn_convnext_b_coco.py', v2_backbone('base'), 108.1),
    'upernet_convnextv2_t_ade20k_512.py':
        ('upernet_convnext_t_ade20k_512.py', v2_backbone('tiny'), 60.3),
    'upernet_convnextv2_b_ade20k_512.py':
        ('upernet_convnext_b_ade20k_512.py', v2_backbone('base'), 122.2),
}


#: DINO-4scale-T's parameters (millions) on each stack: onedl-mmdetection's decoder takes
#: ``embed_dims * 4`` inputs into ``ref_point_head`` where mmdet 3.3.0's takes ``* 2``.
DINO_T_PARAMS = {'upstream': 48.5, 'onedl': 48.62}
#: DETR-family configs: the toolbox's reference config of the head, the paper's backbone recipe
#: of the config named; parameters as above, for the stack installed here.
DETR_CONFIGS = {
    'dino_4scale_convnext_t_coco.py': ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
                                       'mask_rcnn_convnext_t_coco.py',
                                       DINO_T_PARAMS[current_stack('mmdet') or 'upstream']),
}


#: Mask2Former configs: the toolbox's reference config, the head's key in the model, the paper's
#: backbone recipe of the config named; parameters as above.
MASK2FORMER_CONFIGS = {
    'mask2former_convnext_t_coco.py': ('mmdet::mask2former/mask2former_r50_8xb2-lsj-50e_coco.py',
                                       'panoptic_head', 'mask_rcnn_convnext_t_coco.py', 47.7),
    'mask2former_convnext_t_ade20k_512.py': (
        'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py', 'decode_head',
        'upernet_convnext_t_ade20k_512.py', 47.7),
}


@functools.cache
def _load_config(name: str) -> Config:
    return Config.fromfile(str(CONFIGS / name))


def load_config(name: str) -> Config:
    """A fresh copy of ``configs/<name>`` (each file is parsed once per process)."""
    return copy.deepcopy(_load_config(name))


# Weight decay per named part of the model, as the optimizer built by the config's own
# constructor gives it. Parts (weight_decay_part): the backbone's weights; its norms, biases and
# V1 layer scales (1-D); ConvNeXt V2's GRN gamma/beta, (1, 1, 1, C); the weights of the rest
# (neck, transformer, heads); its norms and biases; the embeddings the recipes name.
# - the paper's release (NOTES): 0.05, none on 1-D parameters and biases, whole model;
# - V2: the V2 release's optim_factory.py exempts GRN's gamma/beta as well;
# - DINO: mmdet's dino-4scale_r50_8xb2-12e_coco.py decays every parameter of the detection
#   transformer at 1e-4 (no exemption in its paramwise_cfg); the backbone keeps the paper's 0.05
#   with the release's rule (the config's opening comment);
# - Mask2Former: mmdet's/mmseg's reference configs give the query and level embeddings decay 0.
PAPER_WD = {'backbone': 0.05, 'backbone norms, biases': 0.0, 'head': 0.05,
            'head norms, biases': 0.0}
V2_WD = {**PAPER_WD, 'GRN': 0.0}
DINO_WD = {'backbone': 0.05, 'backbone norms, biases': 0.0, 'head': 1e-4,
           'head norms, biases': 1e-4, 'embeddings': 1e-4}
MASK2FORMER_WD = {**PAPER_WD, 'embeddings': 0.0}
WEIGHT_DECAY = {
    **{name: PAPER_WD for name in RECIPES},
    **{name: V2_WD if 'convnextv2' in name else PAPER_WD for name in OTHER_CONFIGS},
    'dino_4scale_convnext_t_coco.py': DINO_WD,
    'mask2former_convnext_t_coco.py': MASK2FORMER_WD,
    'mask2former_convnext_t_ade20k_512.py': MASK2FORMER_WD,
}
#: DINO's query, level and label embeddings; Mask2Former's query and level embeddings.
EMBEDDING = re.compile(r'(.*\.)?(query_embedding|query_embed|query_feat|level_embed|'
                       r'label_embedding)(\.weight)?')


def weight_decay_part(name: str, shape: torch.Size) -> str:
    """The named part of WEIGHT_DECAY that parameter ``name`` belongs to."""
    if name.startswith('backbone.') and re.fullmatch(r'.*\.grn\.(gamma|beta)', name):
        return 'GRN'
    if EMBEDDING.fullmatch(name):
        return 'embeddings'
    where = 'backbone' if name.startswith('backbone.') else 'head'
    return f'{where} norms, biases' if len(shape) == 1 or name.endswith('.bias') else where


def build_optimizer(model: torch.nn.Module, cfg: Config):
    """``cfg.optim_wrapper`` for ``model``, built by its constructor as the Runner builds it
    (fp32 without a GPU)."""
    cfg = copy.deepcopy(cfg)
    fit_optim_wrapper_to_device(cfg)
    with DefaultScope.overwrite_default_scope(toolbox_of(cfg)):
        return build_optim_wrapper(model, cfg.optim_wrapper)


def build_on_meta(cfg: Config):
    """The config's model on the meta device (no memory, no init) and its optimizer wrapper."""
    with torch.device('meta'):
        model = build_model(cfg)
    return model, build_optimizer(model, cfg)


def test_every_config_is_covered():
    assert sorted(RECIPES) == sorted(RELEASE)
    assert sorted(p.name for p in CONFIGS.glob('*.py')) == sorted(
        {**RECIPES, **OTHER_CONFIGS, **DETR_CONFIGS, **MASK2FORMER_CONFIGS}) == sorted(
        WEIGHT_DECAY)


@pytest.mark.parametrize('name', sorted(WEIGHT_DECAY))
def test_weight_decay_per_part_as_the_optimizer_is_built(name):
    model, optim_wrapper = build_on_meta(load_config(name))
    group_of = {id(p): g for g in optim_wrapper.optimizer.param_groups for p in g['params']}
    found: dict[str, set[float]] = {}
    for param_name, param in model.named_parameters():
        if param.requires_grad:
            part = weight_decay_part(param_name, param.shape)
            found.setdefault(part, set()).add(group_of[id(param)]['weight_decay'])
    assert found == {part: {wd} for part, wd in WEIGHT_DECAY[name].items()}


def without(mapping: dict, *keys: str) -> dict:
    """``mapping`` as a plain dict without ``keys``."""
    plain = mapping.to_dict() if hasattr(mapping, 'to_dict') else dict(mapping)
    return {k: v for k, v in plain.items() if k not in keys}


@pytest.mark.parametrize('name', sorted(MASK2FORMER_CONFIGS))
def test_mask2former_configs_take_the_head_from_the_toolbox_and_the_backbone_recipe_from_the_paper(
        tmp_path, name):
    head_config, head_key, recipe_name, params = MASK2FORMER_CONFIGS[name]
    cfg = load_config(name)
    reference = load_packaged_config(tmp_path, head_config)
    recipe = load_config(recipe_name)
    assert cfg.model.backbone == recipe.model.backbone  # all four stages, the paper's settings
    head = without(cfg.model[head_key], 'in_channels')
    assert cfg.model[head_key].in_channels == [96, 192, 384, 768]
    assert head == without(reference.model[head_key], 'in_channels')
    assert without(cfg.model, 'backbone', head_key) == without(reference.model, 'backbone',
                                                               head_key)
    for key in ('train_cfg', 'param_scheduler', 'train_dataloader', 'val_dataloader',
                'val_evaluator', 'auto_scale_lr'):
        assert cfg[key] == reference[key], key
    wrapper, reference_wrapper = cfg.optim_wrapper, reference.optim_wrapper
    # the head's wrapper (fp32) and clipping; AdamW's eps is torch's default in both
    assert (wrapper.type, wrapper.clip_grad) == (reference_wrapper.type,
                                                 reference_wrapper.clip_grad)
    assert wrapper.optimizer == {**recipe.optim_wrapper.optimizer, 'eps': 1e-8}
    assert wrapper.constructor == recipe.optim_wrapper.constructor
    # the paper's decay in place of the backbone's lr multiplier and norm_decay_mult (the rule
    # gives norms and biases weight decay 0); the embeddings' multipliers kept
    assert without(wrapper.paramwise_cfg, 'custom_keys') == recipe.optim_wrapper.paramwise_cfg
    assert wrapper.paramwise_cfg.custom_keys == without(
        reference_wrapper.paramwise_cfg.custom_keys, 'backbone')
    assert without(reference_wrapper.paramwise_cfg, 'custom_keys') == {'norm_decay_mult': 0.0}
    assert model_complexity(cfg, with_flops=False).params / 1e6 == pytest.approx(params, abs=0.05)


@pytest.mark.parametrize('name', sorted(DETR_CONFIGS))
def test_detr_configs_take_the_head_from_mmdet_and_the_backbone_recipe_from_the_paper(
        tmp_path, name):
    head_config, recipe_name, params = DETR_CONFIGS[name]
    cfg = load_config(name)
    reference = load_packaged_config(tmp_path, head_config)
    recipe = load_config(recipe_name)
    backbone, recipe_backbone = cfg.model.backbone.to_dict(), recipe.model.backbone.to_dict()
    assert backbone.pop('out_indices') == (1, 2, 3)  # strides 8-32; the mapper adds 64
    recipe_backbone.pop('out_indices')
    assert backbone == recipe_backbone
    assert cfg.model.neck.in_channels == [192, 384, 768] and cfg.model.neck.num_outs == 4
    for key in ('encoder', 'decoder', 'bbox_head', 'dn_cfg', 'train_cfg', 'test_cfg',
                'num_queries', 'positional_encoding'):
        assert cfg.model[key] == reference.model[key], key
    for key in ('train_cfg', 'param_scheduler', 'train_dataloader', 'auto_scale_lr'):
        assert cfg[key] == reference[key], key
    wrapper, reference_wrapper = cfg.optim_wrapper, reference.optim_wrapper
    assert wrapper.clip_grad == reference_wrapper.clip_grad  # the head's setting
    # the head's AdamW and weight decay; the paper's layer decay in place of the backbone's lr
    # multiplier (DINO's only paramwise setting: no bias or norm exemption) and the paper's
    # weight decay, with its zero-decay rule, on the backbone
    assert without(reference_wrapper.paramwise_cfg, 'custom_keys') == {}
    assert reference_wrapper.paramwise_cfg.custom_keys == {'backbone': dict(lr_mult=0.1)}
    assert wrapper.optimizer == {**recipe.optim_wrapper.optimizer,
                                 'weight_decay': reference_wrapper.optimizer.weight_decay}
    assert wrapper.optimizer.weight_decay == 1e-4
    assert wrapper.constructor == recipe.optim_wrapper.constructor
    assert without(wrapper.paramwise_cfg, 'part_weight_decay', 'no_decay_rule_parts') == (
        recipe.optim_wrapper.paramwise_cfg)
    assert wrapper.paramwise_cfg.part_weight_decay == dict(
        backbone=recipe.optim_wrapper.optimizer.weight_decay)
    assert tuple(wrapper.paramwise_cfg.no_decay_rule_parts) == ('backbone',)
    # every parameter outside the backbone: the lr and weight decay mmdet's own constructor
    # gives it with DINO's optim_wrapper
    model, optim_wrapper = build_on_meta(cfg)
    reference_cfg = copy.deepcopy(cfg)
    reference_cfg.optim_wrapper = reference_wrapper
    reference_optim = build_optimizer(model, reference_cfg)
    ours, theirs = (
        {id(p): (g['lr'], g['weight_decay']) for g in o.optimizer.param_groups
         for p in g['params']} for o in (optim_wrapper, reference_optim))
    head = [(n, p) for n, p in model.named_parameters() if not n.startswith('backbone.')]
    assert len(head) > 300
    for param_name, param in head:
        assert ours[id(param)] == pytest.approx(theirs[id(param)]), param_name
    assert model_complexity(cfg, with_flops=False).params / 1e6 == pytest.approx(params, abs=0.05)


@pytest.mark.parametrize('name', sorted(OTHER_CONFIGS))
def test_other_configs_keep_the_papers_backbone_and_recipe(name):
    recipe_name, backbone_changes, params = OTHER_CONFIGS[name]
    cfg, recipe = (load_config(n) for n in (name, recipe_name))
    backbone, recipe_backbone = cfg.model.backbone.to_dict(), recipe.model.backbone.to_dict()
    for key, value in backbone_changes.items():
        assert backbone.pop(key) == value, key
        recipe_backbone.pop(key, None)
    assert backbone == recipe_backbone
    keys = ['optim_wrapper', 'train_cfg', 'auto_scale_lr', 'train_dataloader', 'randomness',
            'tta_pipeline', 'tta_model']
    if recipe_name.startswith('cascade'):  # a B Mask R-CNN: the Cascade-B recipe's decay
        assert cfg.optim_wrapper.paramwise_cfg == recipe.optim_wrapper.paramwise_cfg
        assert cfg.optim_wrapper.optimizer.lr == 1e-4  # Mask R-CNN's
        keys.remove('optim_wrapper')
    for key in keys:
        assert cfg.get(key) == recipe.get(key), key
    assert cfg.param_scheduler == recipe.param_scheduler
    assert cfg.model.test_cfg == recipe.model.test_cfg
    assert cfg.model.data_preprocessor == recipe.model.data_preprocessor
    result = model_complexity(cfg, with_flops=False)
    assert result.params / 1e6 == pytest.approx(params, abs=0.05)


def test_deeplab_heads_read_the_right_stages():
    for name, rates in (('deeplabv3plus_convnext_t_os8_ade20k_512.py', (1, 12, 24, 36)),
                        ('deeplabv3plus_convnext_t_os16_ade20k_512.py', (1, 6, 12, 18))):
        head = load_config(name).model.decode_head
        assert (head.type, head.in_index, head.in_channels, head.c1_in_channels) == (
            'DepthwiseSeparableASPPHead', 3, 768, 96)
        assert tuple(head.dilations) == rates and head.num_classes == 150


@pytest.mark.parametrize('name', sorted(RELEASE))
def test_config_runs_as_the_release_did(name):
    (warmup_iters, start_factor), fp16, seed, tta_scale = RELEASE[name]
    cfg = load_config(name)
    warmup = cfg.param_scheduler[0]
    assert (warmup.type, warmup.by_epoch, warmup.begin, warmup.end, warmup.start_factor) == (
        'LinearLR', False, 0, warmup_iters, start_factor)
    if fp16:
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'  # fp16, dynamic loss scale:
        assert cfg.optim_wrapper.get('loss_scale', 'dynamic') == 'dynamic'  # its defaults
        assert cfg.optim_wrapper.get('dtype') in (None, 'float16')
    else:
        assert cfg.optim_wrapper.type == 'OptimWrapper' and 'loss_scale' not in cfg.optim_wrapper
    randomness = cfg.get('randomness') or {}
    assert randomness.get('seed') == seed and not randomness.get('deterministic', False)
    if tta_scale is None:
        assert 'tta_pipeline' not in cfg
        return
    assert cfg.tta_model == dict(type='SegTTAModelWithTestCfg', test_cfg=dict(mode='whole'),
                                 _scope_='mmseg')
    load, tta = cfg.tta_pipeline
    assert load.type == 'LoadImageFromFile' and tta.type == 'TestTimeAug'
    resizes, flips, annotations, pack = tta.transforms
    width, height = tta_scale
    assert [(t.type, tuple(t.scale), t.keep_ratio) for t in resizes] == [
        ('Resize', (int(width * r), int(height * r)), True) for r in RELEASE_RATIOS]
    assert [(t.type, t.prob, t.direction) for t in flips] == [
        ('RandomFlip', 0.0, 'horizontal'), ('RandomFlip', 1.0, 'horizontal')]
    assert [t.type for t in annotations + pack] == ['LoadAnnotations', 'PackSegInputs']


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_config_is_the_papers_recipe(name):
    arch, drop_path, lr, decay_type, decay_rate, num_layers, weights, _ = RECIPES[name]
    cfg = load_config(name)
    assert cfg.custom_imports.imports == ['convnext_dense']
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch, backbone.drop_path_rate) == ('ConvNeXt', arch, drop_path)
    assert backbone.layer_scale_init_value == 1.0 and tuple(backbone.out_indices) == (0, 1, 2, 3)
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=OFFICIAL + weights)
    wrapper = cfg.optim_wrapper
    assert wrapper.constructor == 'ConvNeXtLayerDecayOptimizerConstructor'
    assert wrapper.optimizer == dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=0.05)
    assert wrapper.paramwise_cfg == dict(decay_rate=decay_rate, decay_type=decay_type,
                                         num_layers=num_layers)
    assert cfg.auto_scale_lr.base_batch_size == 16
    assert cfg.train_dataloader.batch_size == 2
    if toolbox_of(cfg) == 'mmdet':
        assert cfg.train_cfg.max_epochs == 36
        steps = [s for s in cfg.param_scheduler if s.type == 'MultiStepLR'][0]
        assert steps.milestones == [27, 33]
        policies = cfg.train_dataloader.dataset.pipeline[3].policies
        assert [t.type for t in policies[1]] == ['RandomChoiceResize', 'RandomCrop',
                                                 'RandomChoiceResize']
        assert policies[0][0].scales == [(s, 1333) for s in range(480, 801, 32)]
    else:
        assert cfg.train_cfg.max_iters == 160000
        crop = 640 if name.endswith('640.py') else 512
        assert cfg.model.test_cfg == dict(mode='slide', crop_size=(crop, crop),
                                          stride=(426, 426) if crop == 640 else (341, 341))
        assert [(s.type, s.begin, s.end) for s in cfg.param_scheduler] == [
            ('LinearLR', 0, 1500), ('PolyLR', 1500, 160000)]


@pytest.mark.parametrize('name', sorted(RECIPES))
def test_model_builds_with_the_papers_parameter_count(name):
    paper_params = RECIPES[name][-1]
    result = model_complexity(load_config(name), with_flops=False)
    assert result.params / 1e6 == pytest.approx(paper_params, rel=0.01)


def test_counting_leaves_the_config_as_it_was():
    cfg = Config.fromfile(str(CONFIGS / 'upernet_convnext_t_ade20k_512.py'))
    before = cfg.model.to_dict()
    model_complexity(cfg, with_flops=False)
    assert cfg.model.to_dict() == before  # the pretrained init_cfg is still there


def test_missing_coco_is_one_clear_message(tmp_path, capsys):
    train = load_tool('train')
    missing = tmp_path / 'nowhere'
    code = train.main([str(CONFIGS / 'mask_rcnn_convnext_t_coco.py'), '--work-dir',
                       str(tmp_path / 'wd'), '--cfg-options',
                       f'train_dataloader.dataset.data_root={missing}'])
    err = capsys.readouterr().err
    assert code == 1
    assert "COCO dataset not found: train_dataloader.dataset" in err and str(missing) in err
    assert 'annotations/instances_train2017.json' in err and 'make demo' in err


def test_seg_folder_is_required_only_where_the_pipeline_loads_maps(tmp_path):
    """mmdet's Mask2Former instance config keeps its panoptic base's ``seg`` prefix and loads no
    maps: plain COCO passes; a pipeline loading panoptic maps needs the folder."""
    from convnext_dense.demo.data import make_coco_dataset
    root = make_coco_dataset(tmp_path / 'coco', num_train=1, num_val=1, image_size=(64, 64))
    cfg = Config.fromfile(str(CONFIGS / 'mask2former_convnext_t_coco.py'))
    cfg.merge_from_dict({'train_dataloader.dataset.data_root': f'{root}/',
                         'train_dataloader.dataset.ann_file': 'annotations/instances_train.json',
                         'train_dataloader.dataset.data_prefix.img': 'train/'})
    assert cfg.train_dataloader.dataset.data_prefix.seg == 'annotations/panoptic_train2017/'
    check_datasets(cfg, ('train_dataloader',))
    cfg.train_dataloader.dataset.pipeline[1] = dict(type='LoadPanopticAnnotations')
    with pytest.raises(DatasetNotFoundError, match="expects '.*annotations/panoptic_train2017/'"):
        check_datasets(cfg, ('train_dataloader',))


def test_missing_ade20k_for_test(tmp_path):
    with pytest.raises(DatasetNotFoundError, match='ADE20K dataset not found: test_dataloader'):
        prepare_test_cfg(str(CONFIGS / 'upernet_convnext_t_ade20k_512.py'), 'x.pth',
                         work_dir=str(tmp_path))


def test_amp_wrapper_falls_back_to_fp32_without_gpu():
    import torch
    cfg = Config(dict(optim_wrapper=dict(type='AmpOptimWrapper', loss_scale='dynamic',
                                         optimizer=dict(type='AdamW', lr=1e-4))))
    fit_optim_wrapper_to_device(cfg)
    if torch.cuda.is_available():
        assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    else:
        assert cfg.optim_wrapper == dict(type='OptimWrapper',
                                         optimizer=dict(type='AdamW', lr=1e-4))


def test_distributed_settings_follow_the_device():
    import torch
    cfg = Config.fromfile(str(CONFIGS / 'cascade_mask_rcnn_convnext_t_coco.py'))
    cfg.launcher = 'pytorch'
    fit_dist_backend_to_device(cfg)
    heads = cfg.model.roi_head.bbox_head
    if torch.cuda.is_available():
        assert cfg.env_cfg.dist_cfg.backend == 'nccl'
        assert [h.norm_cfg.type for h in heads] == ['SyncBN'] * 3
    else:
        assert cfg.env_cfg.dist_cfg.backend == 'gloo'
        assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel',
                                             broadcast_buffers=False, device_ids=None)
        assert [h.norm_cfg.type for h in heads] == ['BN'] * 3


def test_fsdp_strategy_is_put_on_the_cpu_without_gpu():
    import torch
    cfg = Config(dict(launcher='pytorch', model=dict(type='MaskRCNN'), runner_type='FlexibleRunner',
                      strategy=dict(type='FSDPStrategy', model_wrapper=dict(
                          type='MMFullyShardedDataParallel', use_orig_params=True))))
    fit_dist_backend_to_device(cfg)
    expected = dict(type='MMFullyShardedDataParallel', use_orig_params=True)
    if not torch.cuda.is_available():
        expected['device_id'] = 'cpu'  # mmengine would pass LOCAL_RANK, a CUDA index to FSDP
    assert cfg.strategy.model_wrapper == expected


def test_train_options(tmp_path):
    data = tmp_path / 'coco'
    for sub in ('annotations', 'train2017', 'val2017'):
        (data / sub).mkdir(parents=True)
    for split in ('train2017', 'val2017'):
        (data / 'annotations' / f'instances_{split}.json').write_text(
            '{"images": [], "annotations": [], "categories": []}')
    options = {f'{loader}.dataset.data_root': str(data) + '/'
               for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')}
    cfg = prepare_train_cfg(str(CONFIGS / 'mask_rcnn_convnext_t_coco.py'), resume='last.pth',
                            cfg_options=options, launcher='pytorch')
    assert cfg.work_dir == './work_dirs/mask_rcnn_convnext_t_coco'
    assert (cfg.resume, cfg.load_from, cfg.launcher) == (True, 'last.pth', 'pytorch')
    cfg = prepare_train_cfg(str(CONFIGS / 'mask_rcnn_convnext_t_coco.py'), str(tmp_path),
                            resume='auto', cfg_options=options)
    assert (cfg.resume, cfg.load_from, cfg.work_dir) == (True, None, str(tmp_path))


def test_seed_and_deterministic_options():
    ade = str(CONFIGS / 'upernet_convnext_t_ade20k_512.py')
    coco = str(CONFIGS / 'mask_rcnn_convnext_t_coco.py')
    assert Config.fromfile(ade).randomness == dict(seed=0, deterministic=False)
    cfg = Config.fromfile(ade)
    set_randomness(cfg, seed=7)
    assert cfg.randomness == dict(seed=7, deterministic=False)
    set_randomness(cfg, deterministic=True)
    assert cfg.randomness == dict(seed=7, deterministic=True)
    cfg = Config.fromfile(coco)
    set_randomness(cfg)  # nothing asked: the config's (no randomness: mmengine draws a seed)
    assert 'randomness' not in cfg
    set_randomness(cfg, seed=0)
    assert cfg.randomness == dict(seed=0)
    with pytest.raises(ValueError, match='--seed must be a non-negative integer, got -1'):
        set_randomness(cfg, seed=-1)
    args = load_tool('train').parse_args([coco, '--seed', '3', '--deterministic'])
    assert (args.seed, args.deterministic) == (3, True)


@pytest.mark.slow
@pytest.mark.parametrize('name, size, paper_gflops', [
    ('mask_rcnn_convnext_t_coco.py', (800, 1280), 262),
    ('cascade_mask_rcnn_convnext_t_coco.py', (800, 1280), 741),
    ('upernet_convnext_t_ade20k_512.py', (512, 2048), 939),
])
def test_flops_match_the_paper(name, size, paper_gflops):
    result = model_complexity(load_config(name))
    assert result.input_size == size
    assert result.flops / 1e9 == pytest.approx(paper_gflops, rel=0.01)


def test_get_flops_tool_prints_a_table(capsys):
    get_flops = load_tool('get_flops')
    assert get_flops.main([str(CONFIGS / 'upernet_convnext_b_in22k_ade20k_640.py'),
                           '--no-flops']) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == '| config | input (HxW) | params | FLOPs |'
    assert out[2].endswith('upernet_convnext_b_in22k_ade20k_640.py | 640x2560 | 122.1M | - |')
