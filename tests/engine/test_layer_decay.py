"""Layer-wise / stage-wise lr decay: the official rule on real Mask R-CNN and UperNet models."""
from __future__ import annotations

import logging
import re

import mmdet.models  # noqa: F401  (registers mmdet's models)
import mmseg.models  # noqa: F401  (registers mmseg's models)
import pytest
import torch
from mmdet.registry import MODELS as MMDET_MODELS
from mmdet.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMDET_CONSTRUCTORS
from mmengine.logging import MMLogger
from mmengine.optim import AmpOptimWrapper, OptimWrapper, build_optim_wrapper
from mmengine.optim.optimizer import amp_optimizer_wrapper
from mmengine.registry import DefaultScope
from mmseg.registry import MODELS as MMSEG_MODELS
from mmseg.registry import OPTIM_WRAPPER_CONSTRUCTORS as MMSEG_CONSTRUCTORS
from torch import nn

import convnext_dense
from convnext_dense import ConvNeXt
from convnext_dense.engine import layer_decay
from convnext_dense.engine.layer_decay import ConvNeXtLayerDecayOptimizerConstructor, get_layer_id
from convnext_dense.registry import register_in_toolboxes
from tests.batches import mask_rcnn_batch, upernet_batch
from tests.conftest import load_packaged_config

TINY_DIMS = [96, 192, 384, 768]
CONSTRUCTOR = 'ConvNeXtLayerDecayOptimizerConstructor'
# The paper's recipes (NOTES.md): Mask R-CNN T and UperNet T.
MASK_RCNN_T_OPTIM = dict(
    type='OptimWrapper', constructor=CONSTRUCTOR,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))
UPERNET_T_OPTIM = dict(
    type='OptimWrapper', constructor=CONSTRUCTOR,
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6))


def optim_cfg(base: dict, wrapper: dict | None = None, **paramwise) -> dict:
    """``base`` with ``wrapper`` keys and ``paramwise_cfg`` keys changed (None: removed)."""
    paramwise = {**base['paramwise_cfg'], **paramwise}
    return {**base, **(wrapper or {}),
            'paramwise_cfg': {k: v for k, v in paramwise.items() if v is not None}}


# --- the expectation, written from NOTES.md independently of the implementation ---------------

def expected_id(name: str, num_layers: int, decay_type: str) -> int:
    down = re.fullmatch(r'backbone\.downsample_layers\.(\d)\..*', name)
    block = re.fullmatch(r'backbone\.stages\.(\d)\.(\d+)\..*', name)
    if decay_type == 'stage_wise':
        return 0 if down else int(block.group(1)) + 1 if block else num_layers + 1
    if down:
        return {'0': 0, '1': 2, '2': 3, '3': num_layers}[down.group(1)]
    if block:
        stage, j = int(block.group(1)), int(block.group(2))
        return {0: 1, 1: 2, 2: 3 + j // 3, 3: num_layers}[stage]
    return num_layers + 1


# ConvNeXt V2's GRN gamma/beta, shape (1, 1, 1, C): no weight decay. The V2 release
# (facebookresearch/ConvNeXt-V2, optim_factory.py, get_parameter_groups) exempts names ending
# in `.gamma`/`.beta` besides 1-D tensors and biases; in this backbone only GRN's are not 1-D
# (V1's layer scale `gamma` is (C,)), so the rule here names GRN's exactly.
GRN_PARAM = re.compile(r'.*\.grn\.(gamma|beta)')


def in_part(name: str, part: str) -> bool:
    return name == part or name.startswith(part + '.')


def expected_lr_wd(name: str, shape: torch.Size, cfg: dict) -> tuple[float, float]:
    pw, opt = cfg['paramwise_cfg'], cfg['optimizer']
    layers = pw['num_layers']
    layer = expected_id(name, layers, pw['decay_type'])
    lr = opt['lr'] * pw['decay_rate'] ** (layers + 2 - layer - 1)
    parts = pw.get('part_weight_decay', {})
    wd = next((v for part, v in parts.items() if in_part(name, part)), opt['weight_decay'])
    rule_parts = pw.get('no_decay_rule_parts')
    under_rule = rule_parts is None or any(in_part(name, part) for part in rule_parts)
    no_decay = len(shape) == 1 or name.endswith('.bias') or GRN_PARAM.fullmatch(name)
    return lr, 0.0 if under_rule and no_decay else wd


def groups_by_param(optim_wrapper: OptimWrapper) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    for group in optim_wrapper.optimizer.param_groups:
        for param in group['params']:
            found.setdefault(id(param), []).append(group)
    return found


def check_rule(model: nn.Module, optim_wrapper: OptimWrapper, cfg: dict,
               shapes: dict[str, torch.Size] | None = None) -> None:
    """Every trainable parameter in one group with the rule's lr and weight decay.

    ``shapes``: the parameters' original shapes where they differ from ``param.shape``
    (FSDP shards).
    """
    found = groups_by_param(optim_wrapper)
    trainable = 0
    for name, param in model.named_parameters():
        if not param.requires_grad:
            assert id(param) not in found, f'frozen {name} is in a param group'
            continue
        trainable += 1
        assert len(found.get(id(param), [])) == 1, f'{name} is in {len(found.get(id(param), []))}'
        group = found[id(param)][0]
        lr, wd = expected_lr_wd(name, (shapes or {}).get(name, param.shape), cfg)
        assert group['lr'] == pytest.approx(lr, rel=1e-12), name
        assert group['weight_decay'] == wd, name
    assert len(found) == trainable


# --- real models ------------------------------------------------------------------------------

# ``light_heads``: narrower heads and fewer sampled RoIs keep a CPU training step fast; the
# backbone (ConvNeXt-T) and everything the decay rule looks at stay as they are.

def build_mask_rcnn(tmp_path, light_heads: bool = False, **backbone) -> nn.Module:
    cfg = load_packaged_config(tmp_path, 'mmdet::_base_/models/mask-rcnn_r50_fpn.py')
    cfg.model.backbone = dict(type='ConvNeXt', arch='tiny', layer_scale_init_value=1.0,
                              **backbone)
    cfg.model.neck.in_channels = TINY_DIMS
    if light_heads:
        cfg.model.roi_head.bbox_head.fc_out_channels = 128
        cfg.model.train_cfg.rcnn.sampler.num = 64
    with DefaultScope.overwrite_default_scope('mmdet'):
        return MMDET_MODELS.build(cfg.model)


def build_upernet(tmp_path, light_heads: bool = False, **backbone) -> nn.Module:
    cfg = load_packaged_config(tmp_path, 'mmseg::_base_/models/upernet_r50.py')
    cfg.model.pretrained = None
    cfg.model.backbone = dict(type='ConvNeXt', arch='tiny', layer_scale_init_value=1.0,
                              **backbone)
    cfg.model.decode_head.in_channels = TINY_DIMS
    cfg.model.decode_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.auxiliary_head.in_channels = TINY_DIMS[2]
    cfg.model.auxiliary_head.norm_cfg = dict(type='BN', requires_grad=True)
    cfg.model.data_preprocessor.size = (64, 64)
    if light_heads:
        cfg.model.decode_head.channels = 64
        cfg.model.auxiliary_head.channels = 64
    with DefaultScope.overwrite_default_scope('mmseg'):
        return MMSEG_MODELS.build(cfg.model)


def build_wrapper(model: nn.Module, cfg: dict, scope: str) -> OptimWrapper:
    """What mmengine's Runner does with ``optim_wrapper`` under the config's default scope."""
    with DefaultScope.overwrite_default_scope(scope):
        return build_optim_wrapper(model, cfg)


@pytest.fixture(scope='module')
def mask_rcnn(tmp_path_factory) -> nn.Module:
    return build_mask_rcnn(tmp_path_factory.mktemp('mask_rcnn'), frozen_stages=1)


@pytest.fixture(scope='module')
def upernet(tmp_path_factory) -> nn.Module:
    return build_upernet(tmp_path_factory.mktemp('upernet'))


class Toy(nn.Module):
    """The smallest 'detector': a ConvNeXt backbone, a shared head."""

    def __init__(self, arch: str, **backbone) -> None:
        super().__init__()
        self.backbone = ConvNeXt(arch=arch, **backbone)
        self.head = nn.Linear(4, 2)
        self.head_alias = self.head  # one parameter reachable under two names


class Wrapped(nn.Module):
    """Puts ``module.`` in front of every parameter name, as DDP does."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


# --- the pure rule ---------------------------------------------------------------------------

@pytest.mark.parametrize('name, num_layers, layer_id', [
    ('backbone.downsample_layers.0.0.weight', 6, 0),
    ('backbone.downsample_layers.0.1.bias', 6, 0),
    ('backbone.stages.0.0.dwconv.weight', 6, 1),
    ('backbone.stages.0.2.gamma', 6, 1),
    ('backbone.downsample_layers.1.0.weight', 6, 2),
    ('backbone.stages.1.2.pwconv1.bias', 6, 2),
    ('backbone.downsample_layers.2.1.weight', 6, 3),
    ('backbone.stages.2.0.norm.weight', 6, 3),
    ('backbone.stages.2.2.pwconv2.weight', 6, 3),
    ('backbone.stages.2.3.dwconv.weight', 6, 4),
    ('backbone.stages.2.5.gamma', 6, 4),
    ('backbone.stages.2.6.dwconv.bias', 6, 5),
    ('backbone.stages.2.8.pwconv2.weight', 6, 5),
    ('backbone.stages.2.23.dwconv.weight', 12, 10),
    ('backbone.stages.2.24.dwconv.weight', 12, 11),
    ('backbone.stages.2.26.gamma', 12, 11),
    ('backbone.downsample_layers.3.1.weight', 6, 6),
    ('backbone.downsample_layers.3.1.weight', 12, 12),
    ('backbone.stages.3.2.pwconv2.weight', 6, 6),
    ('backbone.stages.3.0.grn.gamma', 12, 12),
    ('backbone.norm0.weight', 6, 7),
    ('backbone.norm3.bias', 12, 13),
    ('neck.lateral_convs.0.conv.weight', 6, 7),
    ('roi_head.mask_head.conv_logits.bias', 6, 7),
    ('decode_head.conv_seg.weight', 12, 13),
    ('stages.0.0.dwconv.weight', 6, 7),  # not under backbone.
    ('module.backbone.stages.2.5.norm.weight', 6, 4),
    ('module.module.backbone.downsample_layers.1.0.weight', 6, 2),
    ('module.neck.fpn_convs.0.conv.weight', 6, 7),
    ('_fsdp_wrapped_module.backbone.stages.2.5.norm.weight', 6, 4),  # FSDP
    ('backbone._fsdp_wrapped_module.stages._fsdp_wrapped_module.0.0.gamma', 6, 1),  # nested
])
def test_layer_wise_ids_by_hand(name, num_layers, layer_id):
    assert get_layer_id(name, num_layers, 'layer_wise') == layer_id


@pytest.mark.parametrize('name, num_layers, layer_id', [
    ('backbone.downsample_layers.0.0.weight', 6, 0),
    ('backbone.downsample_layers.3.1.bias', 6, 0),
    ('backbone.stages.0.2.gamma', 6, 1),
    ('backbone.stages.1.0.dwconv.weight', 6, 2),
    ('backbone.stages.2.0.norm.weight', 6, 3),
    ('backbone.stages.2.26.pwconv1.weight', 12, 3),
    ('backbone.stages.3.1.pwconv2.weight', 6, 4),
    ('backbone.norm2.weight', 6, 7),
    ('decode_head.conv_seg.weight', 12, 13),
    ('module.backbone.stages.3.0.gamma', 12, 4),
])
def test_stage_wise_ids_by_hand(name, num_layers, layer_id):
    assert get_layer_id(name, num_layers, 'stage_wise') == layer_id


def test_lr_scale_and_weight_decay_rule():
    assert layer_decay.get_lr_scale(7, 6, 0.95) == 1.0
    assert layer_decay.get_lr_scale(6, 6, 0.95) == pytest.approx(0.95)
    assert layer_decay.get_lr_scale(0, 6, 0.95) == pytest.approx(0.95 ** 7)
    assert layer_decay.get_lr_scale(0, 12, 0.7) == pytest.approx(0.7 ** 13)
    assert layer_decay.is_no_decay('backbone.stages.0.0.gamma', nn.Parameter(torch.ones(4)))
    assert layer_decay.is_no_decay('neck.conv.bias', nn.Parameter(torch.ones(4, 4)))
    assert not layer_decay.is_no_decay('neck.conv.weight', nn.Parameter(torch.ones(4, 4)))
    # ConvNeXt V2's GRN parameters are (1, 1, 1, C): no decay, by name (GRN_PARAM's source)
    for name in ('backbone.stages.0.0.grn.beta', 'module.backbone.stages.3.2.grn.gamma'):
        assert layer_decay.is_no_decay(name, nn.Parameter(torch.ones(1, 1, 1, 4)))
    # only GRN's: other >= 2-D `gamma`/`beta` parameters are decayed
    assert not layer_decay.is_no_decay('roi_head.attn.gamma', nn.Parameter(torch.ones(4, 4)))
    assert not layer_decay.is_no_decay('backbone.stages.0.0.beta', torch.Size([1, 1, 1, 4]))
    # shapes, as original_param_shapes gives them
    assert not layer_decay.is_no_decay('neck.conv.weight', torch.Size([4, 4, 3, 3]))
    assert layer_decay.is_no_decay('neck.norm.weight', torch.Size([4]))


@pytest.mark.parametrize('call, message', [
    (lambda: get_layer_id('backbone.stages.0.0.gamma', 6, 'block_wise'),
     "decay_type must be 'layer_wise' or 'stage_wise', got 'block_wise'"),
    (lambda: get_layer_id('backbone.stages.0.0.gamma', 0), 'num_layers must be a positive'),
    (lambda: get_layer_id('backbone.stages.4.0.gamma', 6), 'ConvNeXt has stages 0..3'),
    (lambda: get_layer_id('backbone.stages.x.gamma', 6), 'cannot read a stage/block index'),
])
def test_get_layer_id_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


# --- registration ----------------------------------------------------------------------------

def test_one_constructor_in_both_toolboxes_beside_theirs():
    assert MMDET_CONSTRUCTORS.get(CONSTRUCTOR) is ConvNeXtLayerDecayOptimizerConstructor
    assert MMSEG_CONSTRUCTORS.get(CONSTRUCTOR) is ConvNeXtLayerDecayOptimizerConstructor
    assert convnext_dense.ConvNeXtLayerDecayOptimizerConstructor is (
        ConvNeXtLayerDecayOptimizerConstructor)
    # The toolboxes' own constructors keep their names.
    assert MMDET_CONSTRUCTORS.get('LearningRateDecayOptimizerConstructor').__module__.startswith(
        'mmdet.')
    assert MMSEG_CONSTRUCTORS.get('LayerDecayOptimizerConstructor').__module__.startswith('mmseg.')
    assert register_in_toolboxes('OPTIM_WRAPPER_CONSTRUCTORS',
                                 ConvNeXtLayerDecayOptimizerConstructor) == ['mmdet', 'mmseg']
    with pytest.raises(ValueError, match="no registry named 'NO_SUCH_REGISTRY'"):
        register_in_toolboxes('NO_SUCH_REGISTRY', ConvNeXtLayerDecayOptimizerConstructor)


# --- the paper's recipes on the real models --------------------------------------------------

def test_mask_rcnn_tiny_layer_wise(mask_rcnn):
    optim_wrapper = build_wrapper(mask_rcnn, MASK_RCNN_T_OPTIM, 'mmdet')
    assert type(optim_wrapper) is OptimWrapper
    assert isinstance(optim_wrapper.optimizer, torch.optim.AdamW)
    assert optim_wrapper.optimizer.defaults['betas'] == (0.9, 0.999)
    check_rule(mask_rcnn, optim_wrapper, MASK_RCNN_T_OPTIM)
    # frozen_stages=1: the stem (id 0) and stage 0 (id 1) are left out.
    ids = {g['layer_id'] for g in optim_wrapper.optimizer.param_groups}
    assert ids == {2, 3, 4, 5, 6, 7}
    frozen = [p for n, p in mask_rcnn.named_parameters()
              if n.startswith(('backbone.downsample_layers.0.', 'backbone.stages.0.'))]
    assert frozen and not any(p.requires_grad for p in frozen)
    # layer 3 = downsample_layers.2 (4 tensors) + blocks 0..2 of stage 2 (9 tensors each).
    layer3 = [g for g in optim_wrapper.optimizer.param_groups if g['layer_id'] == 3]
    assert sum(len(g['params']) for g in layer3) == 4 + 3 * 9
    assert [g['lr'] for g in layer3] == pytest.approx([1e-4 * 0.95 ** 4] * 2)


def test_upernet_tiny_stage_wise(upernet):
    optim_wrapper = build_wrapper(upernet, UPERNET_T_OPTIM, 'mmseg')
    check_rule(upernet, optim_wrapper, UPERNET_T_OPTIM)
    lrs = {g['layer_id']: g['lr'] for g in optim_wrapper.optimizer.param_groups}
    assert lrs == {0: pytest.approx(1e-4 * 0.9 ** 7), 1: pytest.approx(1e-4 * 0.9 ** 6),
                   2: pytest.approx(1e-4 * 0.9 ** 5), 3: pytest.approx(1e-4 * 0.9 ** 4),
                   4: pytest.approx(1e-4 * 0.9 ** 3), 7: pytest.approx(1e-4)}


def test_one_table_logged_on_rank_0_only(upernet, monkeypatch):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_instance('test_layer_decay_table')
    logger.addHandler(handler)
    try:
        optim_wrapper = build_wrapper(upernet, UPERNET_T_OPTIM, 'mmseg')
        ours = [r for r in records if r.module == 'layer_decay']
        assert len(ours) == 1 and ours[0].levelno == logging.INFO
        # one table, not a line per parameter
        assert not any('backbone.stages' in r.getMessage() for r in records)
        lines = ours[0].getMessage().splitlines()
        assert 'stage_wise decay, decay_rate=0.9, num_layers=6' in lines[0]
        assert lines[1].split() == ['layer', 'lr', 'scale', 'lr', 'weight', 'decay', 'tensors',
                                    'params']
        groups = optim_wrapper.optimizer.param_groups
        assert len(lines) == 2 + len(groups)
        first = lines[2].split()
        assert first[0] == '0' and float(first[1]) == pytest.approx(0.9 ** 7, abs=1e-4)
        assert int(first[4]) == len(groups[0]['params'])
        assert int(first[5].replace(',', '')) == sum(p.numel() for p in groups[0]['params'])

        monkeypatch.setattr(layer_decay, 'get_rank', lambda: 1)
        records.clear()
        build_wrapper(upernet, UPERNET_T_OPTIM, 'mmseg')
        assert not [r for r in records if r.module == 'layer_decay']
    finally:
        logger.removeHandler(handler)


def test_wrapped_model_gets_the_same_groups(mask_rcnn):
    plain = build_wrapper(mask_rcnn, MASK_RCNN_T_OPTIM, 'mmdet')
    # mmengine unwraps one `.module`; the second leaves `module.` in every name.
    wrapped = build_wrapper(Wrapped(Wrapped(mask_rcnn)), MASK_RCNN_T_OPTIM, 'mmdet')
    check_rule(mask_rcnn, wrapped, MASK_RCNN_T_OPTIM)
    strip = [{k: v for k, v in g.items() if k != 'params'} for g in plain.optimizer.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != 'params'}
                     for g in wrapped.optimizer.param_groups]


def test_distributed_data_parallel_on_cpu(tmp_path):
    import torch.distributed as dist
    model = Toy('atto')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0,
                            world_size=1)
    try:
        ddp = nn.parallel.DistributedDataParallel(model)
        cfg = optim_cfg(MASK_RCNN_T_OPTIM)
        check_rule(model, build_wrapper(ddp, cfg, 'mmdet'), cfg)
    finally:
        dist.destroy_process_group()


def test_original_param_shapes_of_plain_and_wrapped_models():
    model = Toy('atto')
    expected = {n: p.shape for n, p in model.named_parameters()}
    assert 'head.weight' in expected and 'head_alias.weight' not in expected  # shared: once
    assert layer_decay.original_param_shapes(model) == expected
    assert layer_decay.original_param_shapes(Wrapped(Wrapped(model))) == expected


@pytest.fixture
def gloo_world_of_one(tmp_path):
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/store', rank=0,
                            world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def shard_like_fsdp(model: nn.Module) -> None:
    """Give each parameter the 1-D view that FSDP's FULL_SHARD leaves on a rank.

    With one rank FSDP falls back to NO_SHARD and keeps the original shapes; on
    several ranks each original parameter is a 1-D slice of the rank's flat shard.
    """
    for param in model.parameters():
        param.data = param.data.reshape(-1)


@pytest.mark.filterwarnings('ignore:FSDP is switching to use `NO_SHARD`')
def test_fsdp_use_orig_params_gets_weight_decay_by_original_shape(gloo_world_of_one):
    """The groups of an FSDP-wrapped model with 1-D parameters are those of the plain model."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    cfg = optim_cfg(MASK_RCNN_T_OPTIM, num_layers=4)
    torch.manual_seed(0)
    plain = Toy('atto')
    shapes = {n: p.shape for n, p in plain.named_parameters()}
    expected = build_wrapper(plain, cfg, 'mmdet')
    torch.manual_seed(0)
    fsdp = FSDP(Toy('atto'), device_id=torch.device('cpu'), use_orig_params=True)
    assert any(n.startswith('_fsdp_wrapped_module.') for n, _ in fsdp.named_parameters())
    shard_like_fsdp(fsdp)
    inner = fsdp.module
    assert all(p.dim() == 1 for p in inner.parameters())  # the old rule: no decay anywhere
    assert layer_decay.original_param_shapes(fsdp) == shapes
    optim_wrapper = build_wrapper(fsdp, cfg, 'mmdet')
    check_rule(inner, optim_wrapper, cfg, shapes)
    strip = [{k: v for k, v in g.items() if k != 'params'}
             for g in expected.optimizer.param_groups]
    assert strip == [{k: v for k, v in g.items() if k != 'params'}
                     for g in optim_wrapper.optimizer.param_groups]
    found = groups_by_param(optim_wrapper)
    block = inner.backbone.stages[0][0]
    for decayed in (block.dwconv.weight, block.pwconv1.weight, inner.head.weight):
        assert found[id(decayed)][0]['weight_decay'] == 0.05
    for not_decayed in (block.gamma, block.norm.weight, block.pwconv1.bias, inner.head.bias):
        assert found[id(not_decayed)][0]['weight_decay'] == 0.0
    # no guessing: the unwrapped module does not say what FSDP flattened
    with pytest.raises(ValueError, match="cannot resolve the original shape of FSDP-managed "
                                         "parameter 'backbone.downsample_layers.0.0.weight'"):
        layer_decay.original_param_shapes(inner)


@pytest.mark.filterwarnings('ignore:FSDP is switching to use `NO_SHARD`')
def test_fsdp_flat_parameters_are_rejected(gloo_world_of_one):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    fsdp = FSDP(Toy('atto'), device_id=torch.device('cpu'), use_orig_params=False)
    with pytest.raises(ValueError, match="'_fsdp_wrapped_module._flat_param' is an FSDP "
                                         'FlatParameter.*use_orig_params=True'):
        build_wrapper(fsdp, MASK_RCNN_T_OPTIM, 'mmdet')


@pytest.mark.parametrize('arch, num_layers, stage2', [
    # atto: 6 blocks in stage 2 -> ids 3 3 3 4 4 4
    ('atto', 4, [3, 3, 3, 4, 4, 4]),
    # small: 27 blocks -> ids 3 (blocks 0-2) ... 11 (blocks 24-26)
    ('small', 12, [3 + j // 3 for j in range(27)]),
])
def test_stage_2_blocks_for_any_depth(arch, num_layers, stage2):
    model = Toy(arch)
    cfg = optim_cfg(MASK_RCNN_T_OPTIM, num_layers=num_layers)
    optim_wrapper = build_wrapper(model, cfg, 'mmdet')
    check_rule(model, optim_wrapper, cfg)
    found = groups_by_param(optim_wrapper)
    for j, block in enumerate(model.backbone.stages[2]):
        assert found[id(block.dwconv.weight)][0]['layer_id'] == stage2[j]
        assert found[id(block.dwconv.weight)][0]['lr'] == pytest.approx(
            1e-4 * 0.95 ** (num_layers + 1 - stage2[j]))
    assert found[id(model.backbone.stages[3][0].gamma)][0]['layer_id'] == num_layers
    # the shared head is in one group once (torch would refuse a duplicate)
    assert len(found[id(model.head.weight)]) == 1


def test_custom_keys_multiply_on_top(mask_rcnn):
    cfg = optim_cfg(MASK_RCNN_T_OPTIM, custom_keys={
        'rpn_head': dict(lr_mult=2.0, decay_mult=0.5),
        'stages.3': dict(lr_mult=0.1),
        'stages.3.2': dict(decay_mult=0.0),  # longer key wins for block 2
    })
    optim_wrapper = build_wrapper(mask_rcnn, cfg, 'mmdet')
    found = groups_by_param(optim_wrapper)
    names = dict(mask_rcnn.named_parameters())

    def lr_wd(name):
        group = found[id(names[name])][0]
        return group['lr'], group['weight_decay']

    assert lr_wd('rpn_head.rpn_conv.weight') == (pytest.approx(2e-4), 0.025)
    assert lr_wd('rpn_head.rpn_conv.bias') == (pytest.approx(2e-4), 0.0)
    assert lr_wd('backbone.stages.3.0.pwconv1.weight') == (pytest.approx(1e-5 * 0.95), 0.05)
    assert lr_wd('backbone.stages.3.2.pwconv1.weight') == (pytest.approx(1e-4 * 0.95), 0.0)
    assert lr_wd('neck.fpn_convs.0.conv.weight') == (pytest.approx(1e-4), 0.05)
    assert lr_wd('backbone.stages.2.0.dwconv.weight') == (pytest.approx(1e-4 * 0.95 ** 4), 0.05)
    assert len(found) == sum(p.requires_grad for p in mask_rcnn.parameters())


def test_convnext_v2_grn_gets_no_weight_decay():
    """The V2 release's rule (GRN_PARAM): GRN gamma/beta in weight decay 0 groups."""
    model = Toy('atto', use_grn=True, layer_scale_init_value=0.0)
    optim_wrapper = build_wrapper(model, MASK_RCNN_T_OPTIM, 'mmdet')
    check_rule(model, optim_wrapper, MASK_RCNN_T_OPTIM)
    found = groups_by_param(optim_wrapper)
    grn = [(n, p) for n, p in model.named_parameters() if GRN_PARAM.fullmatch(n)]
    assert len(grn) == 2 * sum((2, 2, 6, 2))  # gamma and beta in every block of atto
    for name, param in grn:
        assert param.dim() == 4 and found[id(param)][0]['weight_decay'] == 0.0, name
    # the blocks' convolutions keep the optimizer's weight decay
    block = model.backbone.stages[2][0]
    assert found[id(block.pwconv1.weight)][0]['weight_decay'] == 0.05


# DINO's split (configs/dino_4scale_convnext_t_coco.py) on Mask R-CNN: the optimizer's weight
# decay outside the backbone on every parameter, the backbone's own with the zero-decay rule.
PARTS_OPTIM = optim_cfg(
    MASK_RCNN_T_OPTIM, wrapper=dict(optimizer=dict(type='AdamW', lr=1e-4, weight_decay=1e-4)),
    part_weight_decay=dict(backbone=0.05), no_decay_rule_parts=('backbone',))


def test_part_weight_decay(mask_rcnn):
    optim_wrapper = build_wrapper(mask_rcnn, PARTS_OPTIM, 'mmdet')
    check_rule(mask_rcnn, optim_wrapper, PARTS_OPTIM)
    found = groups_by_param(optim_wrapper)
    names = dict(mask_rcnn.named_parameters())

    def lr_wd(name):
        group = found[id(names[name])][0]
        return group['lr'], group['weight_decay']

    assert lr_wd('backbone.stages.3.0.pwconv1.weight') == (pytest.approx(1e-4 * 0.95), 0.05)
    assert lr_wd('backbone.stages.3.0.pwconv1.bias') == (pytest.approx(1e-4 * 0.95), 0.0)
    assert lr_wd('backbone.norm3.weight') == (pytest.approx(1e-4), 0.0)
    assert lr_wd('neck.fpn_convs.0.conv.weight') == (pytest.approx(1e-4), 1e-4)
    assert lr_wd('neck.fpn_convs.0.conv.bias') == (pytest.approx(1e-4), 1e-4)  # outside the rule
    assert lr_wd('rpn_head.rpn_conv.bias') == (pytest.approx(1e-4), 1e-4)


def test_part_weight_decay_nested_part_and_custom_keys(mask_rcnn):
    """A part deeper in the model; the rule everywhere (no no_decay_rule_parts); decay_mult on
    top of the part's weight decay."""
    cfg = optim_cfg(MASK_RCNN_T_OPTIM, part_weight_decay={'roi_head.mask_head': 0.01},
                    custom_keys={'mask_head.convs.0': dict(decay_mult=0.5)})
    optim_wrapper = build_wrapper(mask_rcnn, cfg, 'mmdet')
    found = groups_by_param(optim_wrapper)
    for name, param in mask_rcnn.named_parameters():
        if not param.requires_grad:
            continue
        lr, wd = expected_lr_wd(name, param.shape, cfg)
        if 'mask_head.convs.0.' in name:
            wd *= 0.5
        assert found[id(param)][0]['weight_decay'] == pytest.approx(wd), name
    names = dict(mask_rcnn.named_parameters())
    wd_of = {n: found[id(names[n])][0]['weight_decay'] for n in (
        'roi_head.mask_head.convs.1.conv.weight', 'roi_head.mask_head.convs.0.conv.weight',
        'roi_head.mask_head.convs.1.conv.bias', 'roi_head.bbox_head.shared_fcs.0.weight')}
    assert wd_of == {'roi_head.mask_head.convs.1.conv.weight': 0.01,
                     'roi_head.mask_head.convs.0.conv.weight': pytest.approx(0.005),
                     'roi_head.mask_head.convs.1.conv.bias': 0.0,
                     'roi_head.bbox_head.shared_fcs.0.weight': 0.05}


def test_part_weight_decay_table_names_the_part(mask_rcnn):
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = MMLogger.get_instance('test_layer_decay_parts_table')
    logger.addHandler(handler)
    try:
        optim_wrapper = build_wrapper(mask_rcnn, PARTS_OPTIM, 'mmdet')
    finally:
        logger.removeHandler(handler)
    (record,) = [r for r in records if r.module == 'layer_decay']
    lines = record.getMessage().splitlines()
    assert lines[1].split()[-1] == 'part'
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == len(optim_wrapper.optimizer.param_groups)
    # (layer, weight decay, part): backbone layers 2..6 (frozen stem and stage 0), its output
    # norms at 7, and everything else at 7 with 1e-4
    assert {(int(r[0]), float(r[3]), r[6]) for r in rows} == {
        *((layer, wd, 'backbone') for layer in range(2, 7) for wd in (0.0, 0.05)),
        (7, 0.0, 'backbone'), (7, 1e-4, '-')}


# --- training steps --------------------------------------------------------------------------

def train_step_moves_each_group_by_its_lr(model: nn.Module, optim_wrapper: OptimWrapper,
                                          data: dict) -> None:
    """One AdamW step moves each element with a gradient by about its group's lr."""
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model.train()
    with optim_wrapper.optim_context(model):
        losses = model(**data, mode='loss')
    total, _ = model.parse_losses(losses)
    assert torch.isfinite(total)
    optim_wrapper.update_params(total)
    params = dict(model.named_parameters())
    for group in optim_wrapper.optimizer.param_groups:
        names = [n for n, p in params.items() if any(p is q for q in group['params'])]
        moved = torch.cat([(params[n].detach() - before[n]).abs().flatten() for n in names])
        largest = max(before[n].abs().max().item() for n in names)
        # First AdamW step: |update| = lr * |g| / (|g| + eps) + lr * wd * |p| <= lr (1 + wd |p|).
        bound = group['lr'] * (1 + group['weight_decay'] * largest)
        assert moved.max() <= bound * 1.001, group['layer_id']
        assert moved.median() == pytest.approx(group['lr'], rel=0.05), group['layer_id']
    for name, p in params.items():
        if not p.requires_grad:
            assert torch.equal(p, before[name]), name


def test_mask_rcnn_training_step(tmp_path):
    torch.manual_seed(0)
    model = build_mask_rcnn(tmp_path, light_heads=True, frozen_stages=1)
    optim_wrapper = build_wrapper(model, MASK_RCNN_T_OPTIM, 'mmdet')
    train_step_moves_each_group_by_its_lr(model, optim_wrapper, mask_rcnn_batch(model))


def test_upernet_training_step_with_amp_optim_wrapper(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_upernet(tmp_path, light_heads=True, frozen_stages=1)
    if torch.cuda.is_available():
        model, dtype = model.cuda(), 'float16'
    else:
        # mmengine's AmpOptimWrapper asserts a GPU in its constructor, although
        # everything else in it works on the CPU: its GradScaler disables itself
        # without CUDA and mmengine's autocast runs CPU autocast in bfloat16. Lift
        # only that assertion so the wrapper's own code path runs here.
        monkeypatch.setattr(amp_optimizer_wrapper, 'is_cuda_available', lambda: True)
        dtype = 'bfloat16'
    cfg = optim_cfg(UPERNET_T_OPTIM, wrapper=dict(type='AmpOptimWrapper', dtype=dtype))
    optim_wrapper = build_wrapper(model, cfg, 'mmseg')
    assert isinstance(optim_wrapper, AmpOptimWrapper) and optim_wrapper.cast_dtype == getattr(
        torch, dtype)
    check_rule(model, optim_wrapper, cfg)
    train_step_moves_each_group_by_its_lr(model, optim_wrapper, upernet_batch(model))


# --- errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize('change, message', [
    (dict(decay_type='block_wise'),
     "decay_type must be 'layer_wise' or 'stage_wise', got 'block_wise'"),
    (dict(num_layers=None), 'paramwise_cfg.num_layers is required'),
    (dict(decay_rate=None), 'paramwise_cfg.decay_rate is required'),
    (dict(num_layers=0), 'num_layers must be a positive integer (6 for ConvNeXt-T, 12 for '
                         'S/B/L/XL in the official recipes), got 0'),
    (dict(num_layers=-6), 'num_layers must be a positive integer'),
    (dict(num_layers=6.0), 'num_layers must be a positive integer'),
    (dict(decay_rate=0), 'decay_rate must be a number in (0, 1] (1 means no decay), got 0'),
    (dict(decay_rate=1.5), 'decay_rate must be a number in (0, 1]'),
    (dict(decay_rate='0.9'), "decay_rate must be a number in (0, 1] (1 means no decay), got '0.9'"),
    (dict(decay_rates=0.9), "unknown paramwise_cfg key 'decay_rates'"),
    (dict(bypass_duplicate=False), 'bypass_duplicate must be True'),
    (dict(custom_keys={'neck': dict(lr_mult=-1)}), "custom_keys['neck'].lr_mult must be"),
    (dict(custom_keys={'neck': dict(momentum=0.9)}),
     "custom_keys['neck'] may set lr_mult and decay_mult only, got 'momentum'"),
    (dict(part_weight_decay={}), 'paramwise_cfg.part_weight_decay must be a non-empty dict'),
    (dict(part_weight_decay=0.05), 'paramwise_cfg.part_weight_decay must be a non-empty dict'),
    (dict(part_weight_decay={'backbone': -1}),
     "paramwise_cfg.part_weight_decay['backbone'] must be a number >= 0, got -1"),
    (dict(part_weight_decay={'backbone': '1e-4'}),
     "paramwise_cfg.part_weight_decay['backbone'] must be a number >= 0, got '1e-4'"),
    (dict(part_weight_decay={'backbone.': 0.05}),
     "paramwise_cfg.part_weight_decay: each part must be a module path such as 'backbone' or "
     "'bbox_head.cls_branches', got 'backbone.'"),
    (dict(part_weight_decay={'': 0.05}), "must be a module path such as 'backbone'"),
    (dict(part_weight_decay={'backbone': 0.05, 'backbone.stages': 0.0}),
     "paramwise_cfg.part_weight_decay: 'backbone.stages' lies inside 'backbone', so its "
     'parameters would be in two parts; name parts that do not nest'),
    (dict(part_weight_decay={'bakbone': 0.05}),
     "paramwise_cfg.part_weight_decay: 'bakbone' holds no parameter of MaskRCNN; its parts are "
     'backbone, neck, roi_head, rpn_head'),
    (dict(part_weight_decay={'back': 0.05}), "'back' holds no parameter of MaskRCNN"),
    (dict(no_decay_rule_parts='backbone'),
     "paramwise_cfg.no_decay_rule_parts must be a non-empty list of parts such as "
     "('backbone',), got 'backbone'"),
    (dict(no_decay_rule_parts=()), 'no_decay_rule_parts must be a non-empty list'),
    (dict(no_decay_rule_parts=('neck', 'neck')),
     "paramwise_cfg.no_decay_rule_parts: a part is named twice in ['neck', 'neck']"),
    (dict(no_decay_rule_parts=('roi_head', 'roi_head.bbox_head')),
     "'roi_head.bbox_head' lies inside 'roi_head'"),
    (dict(no_decay_rule_parts=('head',)),
     "paramwise_cfg.no_decay_rule_parts: 'head' holds no parameter of MaskRCNN"),
] + [({key: 0.0}, f'paramwise_cfg.{key} is not supported') for key in layer_decay.REJECTED_KEYS])
def test_bad_paramwise_cfg_is_rejected(mask_rcnn, change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_wrapper(mask_rcnn, optim_cfg(MASK_RCNN_T_OPTIM, **change), 'mmdet')


@pytest.mark.parametrize('optimizer, message', [
    (dict(type='AdamW', weight_decay=0.05), 'optimizer.lr must be a positive number'),
    (dict(type='AdamW', lr=1e-4), 'optimizer.weight_decay must be set to a number >= 0'),
])
def test_optimizer_needs_lr_and_weight_decay(mask_rcnn, optimizer, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_wrapper(mask_rcnn, {**MASK_RCNN_T_OPTIM, 'optimizer': optimizer}, 'mmdet')


def test_bad_models_are_rejected():
    with pytest.raises(ValueError, match=re.escape(
            'needs a model with a `backbone` attribute (a detector or segmentor), '
            'got ConvNeXt without one')):
        build_wrapper(ConvNeXt(arch='atto'), MASK_RCNN_T_OPTIM, 'mmdet')

    other = nn.Module()
    other.backbone = nn.Conv2d(3, 8, 3)
    with pytest.raises(ValueError, match='expects a ConvNeXt-style backbone .* got Conv2d'):
        build_wrapper(other, MASK_RCNN_T_OPTIM, 'mmdet')

    # ConvNeXt-S with ConvNeXt-T's num_layers: stage-2 blocks 9..26 would get lr scales
    # above stage 3's, and blocks 24..26 above 1.
    with pytest.raises(ValueError, match=re.escape(
            'num_layers=6 is too small for this backbone: backbone.stages.2.24.gamma '
            'gets layer_wise id 11 > num_layers')):
        build_wrapper(Toy('small'), MASK_RCNN_T_OPTIM, 'mmdet')
    with pytest.raises(ValueError, match='expected num_layers >= 4'):
        build_wrapper(Toy('atto'), optim_cfg(UPERNET_T_OPTIM, num_layers=3), 'mmseg')


# --- a backbone that builds fewer stages (out_indices=(0, 1, 2)) -----------------------------

@pytest.mark.parametrize('decay_type, ids', [('layer_wise', {0, 1, 2, 3, 4, 5, 7}),
                                             ('stage_wise', {0, 1, 2, 3, 7})])
def test_backbone_with_fewer_stages_keeps_the_rule(tmp_path, decay_type, ids):
    """Stage 3 is not built: its id (6 / 4) has no group, all other ids are unchanged."""
    cfg = load_packaged_config(tmp_path, 'mmdet::_base_/models/mask-rcnn_r50_fpn.py')
    cfg.model.backbone = dict(type='ConvNeXt', arch='tiny', layer_scale_init_value=1.0,
                              out_indices=(0, 1, 2))
    cfg.model.neck.in_channels = TINY_DIMS[:3]
    with DefaultScope.overwrite_default_scope('mmdet'):
        model = MMDET_MODELS.build(cfg.model)
    assert model.backbone.num_built_stages == 3
    cfg = optim_cfg(MASK_RCNN_T_OPTIM, decay_type=decay_type)
    optim_wrapper = build_wrapper(model, cfg, 'mmdet')
    check_rule(model, optim_wrapper, cfg)
    assert {g['layer_id'] for g in optim_wrapper.optimizer.param_groups} == ids
