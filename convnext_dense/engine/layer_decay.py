"""Layer-wise and stage-wise learning-rate decay for ConvNeXt detectors and segmentors.

The rule is the one of the paper's official release, applied to the parameter
names of the whole model (``backbone.*``, ``neck.*``, ``decode_head.*``, ...).
With ``L = num_layers``, the layer id of a parameter is (layer_wise / stage_wise):

- ``backbone.downsample_layers.0``: 0 / 0
- ``backbone.downsample_layers.1``: 2 / 0
- ``backbone.downsample_layers.2``: 3 / 0
- ``backbone.downsample_layers.3``: L / 0
- ``backbone.stages.0.*``: 1 / 1
- ``backbone.stages.1.*``: 2 / 2
- ``backbone.stages.2.j.*``: 3 + j // 3 / 3
- ``backbone.stages.3.*``: L / 4
- everything else (the backbone's output norms ``backbone.norm{i}``, neck, heads): L + 1 / L + 1

A parameter with id ``i`` gets the learning rate ``lr * decay_rate ** (L + 1 - i)``.
Weight decay 0 goes to 1-D parameters and names ending in ``.bias`` (the V1 release's
rule; V1's layer scale ``gamma`` is 1-D) and to ConvNeXt V2's GRN parameters, names
ending in ``.grn.gamma`` / ``.grn.beta`` (shape ``(1, 1, 1, C)``; the V2 release's
``optim_factory.py`` exempts them by name); all others get the optimizer's
``weight_decay``. Frozen parameters are left out.

Per part of the model (a module path such as ``backbone`` or ``bbox_head``),
``paramwise_cfg.part_weight_decay`` sets another weight decay, and
``no_decay_rule_parts`` limits the zero-decay rule above to the parts listed: the
parameters of every other part, 1-D ones included, decay at their weight decay, as
mmengine's default constructor does (DINO's recipe, for instance, decays every
parameter of its transformer at 1e-4).

Under FSDP (``use_orig_params=True``) each rank holds its original parameters as
flat 1-D shards; "1-D" then means 1-D in the original, unsharded shape, which
:func:`original_param_shapes` reads from FSDP's flat-parameter metadata.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from numbers import Real
from typing import Any

import torch
import torch.distributed as dist
from mmengine.dist import get_rank
from mmengine.logging import MMLogger
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from torch import nn

from ..arch import NUM_STAGES

DECAY_TYPES = ('layer_wise', 'stage_wise')
#: Prefix that DistributedDataParallel (and mmengine's wrappers) put before parameter names.
WRAPPER_PREFIX = 'module.'
#: Name piece that torch's FullyShardedDataParallel puts in front of the names it wraps.
FSDP_WRAPPED_MODULE = '_fsdp_wrapped_module'
DOWNSAMPLE_PREFIX = 'backbone.downsample_layers.'
STAGES_PREFIX = 'backbone.stages.'


#: paramwise_cfg keys of this constructor.
DECAY_KEYS = ('decay_rate', 'decay_type', 'num_layers', 'part_weight_decay',
              'no_decay_rule_parts')
#: Name endings of ConvNeXt V2's GRN parameters, which get no weight decay (V2 release).
GRN_SUFFIXES = ('.grn.gamma', '.grn.beta')
#: A part of the model: a module path of dot-separated names.
PART_PATTERN = re.compile(r'[A-Za-z_]\w*(\.\w+)*')
#: paramwise_cfg keys of mmengine's DefaultOptimWrapperConstructor honoured on top of the decay.
HONOURED_KEYS = ('custom_keys', 'bypass_duplicate')
#: paramwise_cfg keys of mmengine's DefaultOptimWrapperConstructor that conflict with the rule.
REJECTED_KEYS = ('bias_lr_mult', 'bias_decay_mult', 'norm_decay_mult', 'dwconv_decay_mult',
                 'flat_decay_mult', 'dcn_offset_lr_mult')
CUSTOM_KEY_FIELDS = ('lr_mult', 'decay_mult')


def strip_wrapper_prefix(name: str) -> str:
    """Remove wrapper pieces from a parameter name.

    Leading ``module.`` prefixes (DDP and similar wrappers) and ``_fsdp_wrapped_module.``
    pieces anywhere (FSDP, also nested) are dropped:
    ``module._fsdp_wrapped_module.backbone.x`` becomes ``backbone.x``.
    """
    name = '.'.join(part for part in name.split('.') if part != FSDP_WRAPPED_MODULE)
    while name.startswith(WRAPPER_PREFIX):
        name = name[len(WRAPPER_PREFIX):]
    return name


def _fsdp_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Original shapes of the parameters that FSDP modules inside ``model`` (or itself) flatten.

    Keys are cleaned names (:func:`strip_wrapper_prefix`) relative to ``model``; shared
    parameters are listed under each of their names.
    """
    if not dist.is_available():
        return {}
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    shapes: dict[str, torch.Size] = {}
    for path, fsdp in model.named_modules(remove_duplicate=False):
        handle = getattr(fsdp, '_handle', None) if isinstance(fsdp, FSDP) else None
        if handle is None:  # not FSDP, or an FSDP unit without parameters of its own
            continue
        flat = handle.flat_param
        prefix = f'{path}.' if path else ''
        if len(flat._fqns) != len(flat._shapes):
            raise ValueError(f'FSDP module {path!r}: {len(flat._fqns)} parameter names but '
                             f'{len(flat._shapes)} shapes in its flat parameter')
        own = dict(zip(flat._fqns, flat._shapes))
        for fqn, shape in own.items():
            shapes[strip_wrapper_prefix(prefix + fqn)] = torch.Size(shape)
        for info in flat._shared_param_infos:
            prim = (f'{info.prim_module_name}.' if info.prim_module_name else '') + \
                info.prim_param_name
            alias = (f'{info.module_name}.' if info.module_name else '') + info.param_name
            shapes[strip_wrapper_prefix(prefix + alias)] = torch.Size(own[prim])
    return shapes


def _flat_parameter_class() -> type:
    """torch's FSDP ``FlatParameter`` (imported late: ``torch.distributed`` is optional)."""
    from torch.distributed.fsdp import FlatParameter

    return FlatParameter


def original_param_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Shape of every parameter of ``model`` before any FSDP flattening and sharding.

    Args:
        model: A plain, DDP-wrapped or FSDP-wrapped (``use_orig_params=True``) model.

    Returns:
        ``{name: shape}`` for ``model.named_parameters()``, names cleaned by
        :func:`strip_wrapper_prefix`. Plain parameters give ``param.shape``; parameters
        that FSDP manages (1-D shards, possibly empty, on each rank) give the shape recorded
        in their ``FlatParameter``'s metadata (``_fqns``/``_shapes``), matched by exact name.

    Raises:
        ValueError: for a ``FlatParameter`` (FSDP with ``use_orig_params=False``), or an
            FSDP-managed parameter whose FSDP module is not ``model`` or inside it (e.g.
            the module unwrapped from its FSDP wrapper), instead of guessing its shape.
    """
    fsdp_shapes = _fsdp_shapes(model)
    shapes: dict[str, torch.Size] = {}
    for raw_name, param in model.named_parameters():
        name = strip_wrapper_prefix(raw_name)
        if not getattr(param, '_fsdp_flattened', False):  # torch's mark of FSDP-managed tensors
            shapes[name] = param.shape
        elif name in fsdp_shapes:
            shapes[name] = fsdp_shapes[name]
        elif isinstance(param, _flat_parameter_class()):
            raise ValueError(
                f'{raw_name!r} is an FSDP FlatParameter: the original parameter names and '
                'shapes are hidden; wrap the model with use_orig_params=True '
                "(model_wrapper=dict(type='MMFullyShardedDataParallel', use_orig_params=True))")
        else:
            raise ValueError(
                f'cannot resolve the original shape of FSDP-managed parameter {raw_name!r}: '
                f'no FSDP module in the given {type(model).__name__} lists {name!r}; pass the '
                'FSDP-wrapped model itself, not the module unwrapped from it')
    return shapes


def _is_number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def check_decay_type(decay_type: Any) -> None:
    """Raise ``ValueError`` unless ``decay_type`` is ``'layer_wise'`` or ``'stage_wise'``."""
    if decay_type not in DECAY_TYPES:
        raise ValueError(f"decay_type must be 'layer_wise' or 'stage_wise', got {decay_type!r}")


def check_num_layers(num_layers: Any) -> None:
    """Raise ``ValueError`` unless ``num_layers`` is a positive integer."""
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError('num_layers must be a positive integer (6 for ConvNeXt-T, 12 for '
                         f'S/B/L/XL in the official recipes), got {num_layers!r}')


def check_decay_rate(decay_rate: Any) -> None:
    """Raise ``ValueError`` unless ``decay_rate`` is a number in (0, 1]."""
    if not _is_number(decay_rate) or not 0 < decay_rate <= 1:
        raise ValueError(f'decay_rate must be a number in (0, 1] (1 means no decay), '
                         f'got {decay_rate!r}')


def _index(name: str, part: int) -> int:
    """Integer at dot-separated position ``part`` of ``name`` (a module index)."""
    parts = name.split('.')
    if len(parts) <= part or not parts[part].isdigit():
        raise ValueError(f'cannot read a stage/block index from parameter name {name!r}')
    return int(parts[part])


def get_layer_id(name: str, num_layers: int, decay_type: str = 'layer_wise') -> int:
    """Return the decay layer id of a detector/segmentor parameter (official ConvNeXt rule).

    Args:
        name: Parameter name in the whole model, e.g. ``backbone.stages.2.4.dwconv.weight``;
            leading ``module.`` prefixes of wrapped models are ignored.
        num_layers: ``L`` of the rule (6 for ConvNeXt-T, 12 for S/B/L/XL).
        decay_type: ``'layer_wise'`` or ``'stage_wise'``.

    Returns:
        An id in ``0..L + 1``; ``L + 1`` (full learning rate) for everything
        outside the backbone's downsampling layers and stages.
    """
    check_decay_type(decay_type)
    check_num_layers(num_layers)
    name = strip_wrapper_prefix(name)
    if name.startswith(DOWNSAMPLE_PREFIX):
        stage = _index(name, 2)
        if stage >= NUM_STAGES:
            raise ValueError(f'ConvNeXt has downsample layers 0..3, got {name!r}')
        if decay_type == 'stage_wise':
            return 0
        return (0, 2, 3, num_layers)[stage]
    if name.startswith(STAGES_PREFIX):
        stage = _index(name, 2)
        if stage >= NUM_STAGES:
            raise ValueError(f'ConvNeXt has stages 0..3, got {name!r}')
        if decay_type == 'stage_wise':
            return stage + 1
        if stage == 2:
            return 3 + _index(name, 3) // 3
        return (1, 2, None, num_layers)[stage]
    return num_layers + 1


def get_lr_scale(layer_id: int, num_layers: int, decay_rate: float) -> float:
    """Learning-rate multiplier of layer ``layer_id``: ``decay_rate ** (L + 2 - id - 1)``."""
    return decay_rate ** (num_layers + 2 - layer_id - 1)


def is_no_decay(name: str, shape: torch.Size | nn.Parameter) -> bool:
    """True for parameters without weight decay under the official rule.

    Those are 1-D tensors and names ending in ``.bias`` (the V1 release), and ConvNeXt
    V2's GRN ``gamma``/``beta`` (names ending in ``.grn.gamma``/``.grn.beta``, shape
    ``(1, 1, 1, C)``; the V2 release's ``optim_factory.py``). ``shape`` is the
    parameter's original shape (:func:`original_param_shapes`), or the parameter itself
    when it is not sharded.
    """
    if isinstance(shape, torch.Tensor):
        shape = shape.shape
    return len(shape) == 1 or name.endswith('.bias') or name.endswith(GRN_SUFFIXES)


def part_of(name: str, parts: Iterable[str]) -> str | None:
    """The part among ``parts`` (module paths) that parameter ``name`` lies in, or None.

    ``backbone`` holds ``backbone.x`` (and a parameter named ``backbone``), not
    ``backbone2.x``.
    """
    for part in parts:
        if name == part or name.startswith(part + '.'):
            return part
    return None


def check_parts(parts: Any, key: str) -> None:
    """Raise ``ValueError`` unless ``parts`` are distinct, non-nested module paths.

    ``key`` names the setting in the message (``paramwise_cfg.part_weight_decay``).
    """
    for part in parts:
        if not isinstance(part, str) or not PART_PATTERN.fullmatch(part):
            raise ValueError(f'{key}: each part must be a module path such as \'backbone\' or '
                             f"'bbox_head.cls_branches', got {part!r}")
    for part in parts:
        inner = [p for p in parts if p != part and part_of(p, [part])]
        if inner:
            raise ValueError(f'{key}: {inner[0]!r} lies inside {part!r}, so its parameters '
                             'would be in two parts; name parts that do not nest')
    if len(set(parts)) != len(parts):
        raise ValueError(f'{key}: a part is named twice in {list(parts)!r}')


@dataclass
class _Group:
    layer_id: int
    lr_scale: float
    lr: float
    weight_decay: float
    custom_key: str | None
    #: The ``part_weight_decay`` part the parameters lie in, if any.
    part: str | None = None
    params: list[nn.Parameter] = field(default_factory=list)
    #: Number of elements of the parameters in their original (unsharded) shapes.
    numel: int = 0

    def as_param_group(self) -> dict[str, Any]:
        group = dict(params=self.params, lr=self.lr, weight_decay=self.weight_decay,
                     layer_id=self.layer_id, lr_scale=self.lr_scale)
        if self.custom_key is not None:
            group['custom_key'] = self.custom_key
        return group


def _format_table(groups: Iterable[_Group], header: str) -> str:
    groups = list(groups)
    with_keys = any(g.custom_key is not None for g in groups)
    with_parts = any(g.part is not None for g in groups)
    lines = [header, f'{"layer":>5}  {"lr scale":>9}  {"lr":>10}  {"weight decay":>12}  '
             f'{"tensors":>7}  {"params":>11}' + ('  part' if with_parts else '')
             + ('  custom key' if with_keys else '')]
    for g in groups:
        line = (f'{g.layer_id:>5}  {g.lr_scale:>9.4f}  {g.lr:>10.3e}  {g.weight_decay:>12.4g}  '
                f'{len(g.params):>7}  {g.numel:>11,}')
        if with_parts:
            line += f'  {g.part or "-"}'
        if with_keys:
            line += f'  {g.custom_key or "-"}'
        lines.append(line)
    return '\n'.join(lines)


class ConvNeXtLayerDecayOptimizerConstructor(DefaultOptimWrapperConstructor):
    """Optimizer-wrapper constructor with ConvNeXt layer-wise or stage-wise lr decay.

    Config::

        optim_wrapper = dict(
            type='AmpOptimWrapper',
            constructor='ConvNeXtLayerDecayOptimizerConstructor',
            optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
            paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))

    ``paramwise_cfg`` keys:

    - ``decay_rate`` (float in (0, 1], required), ``num_layers`` (int >= 1,
      required), ``decay_type`` (``'layer_wise'``, the default, or ``'stage_wise'``):
      the rule of :func:`get_layer_id` and :func:`get_lr_scale`.
    - ``part_weight_decay``: ``{part: weight_decay}``, where a part is a module path
      (``'backbone'``, ``'bbox_head'``): the parameters in it decay at that value in place
      of ``optimizer.weight_decay``.
    - ``no_decay_rule_parts``: parts (module paths) to which the zero-decay rule (1-D,
      ``.bias``, GRN) is limited; every parameter of the other parts decays at its weight
      decay. Default: the rule applies to the whole model.
    - ``custom_keys``: ``{substring: dict(lr_mult=..., decay_mult=...)}``; as in
      mmengine, the longest key contained in a parameter's name applies, and its
      multipliers are applied on top of the decay and of the part's weight decay.
    - ``bypass_duplicate=True`` is accepted: a parameter shared by several
      modules is always put in one group only.

    mmengine's other keys (``bias_lr_mult``, ``norm_decay_mult``, ...) are
    rejected: the rule already decides the weight decay of norms and biases.
    A ``num_layers`` below the largest id of the backbone (e.g. 6 with
    ConvNeXt-S, whose stage-2 blocks reach id 11) is rejected too, and so are parts
    that nest (``backbone`` and ``backbone.stages``) or that hold no parameter of the model.
    """

    def _validate_cfg(self) -> None:
        super()._validate_cfg()
        cfg = self.paramwise_cfg
        name = type(self).__name__
        for key in cfg:
            if key in REJECTED_KEYS:
                raise ValueError(
                    f'paramwise_cfg.{key} is not supported by {name}: the layer-decay rule sets '
                    'lr and weight decay per parameter (weight decay 0 for 1-D and bias '
                    'parameters); use custom_keys=dict(NAME=dict(lr_mult=..., decay_mult=...)) '
                    'to change parameters by name')
            if key not in DECAY_KEYS + HONOURED_KEYS:
                raise ValueError(f'unknown paramwise_cfg key {key!r} for {name}; expected some of '
                                 f'{", ".join(DECAY_KEYS + HONOURED_KEYS)}')
        for key in ('num_layers', 'decay_rate'):
            if key not in cfg:
                raise ValueError(f'paramwise_cfg.{key} is required by {name}, got paramwise_cfg='
                                 f'{dict(cfg)!r}')
        check_num_layers(cfg['num_layers'])
        check_decay_rate(cfg['decay_rate'])
        check_decay_type(cfg.get('decay_type', 'layer_wise'))
        if cfg.get('bypass_duplicate', True) is not True:
            raise ValueError('paramwise_cfg.bypass_duplicate must be True (shared parameters are '
                             f'always put in one group only), got {cfg["bypass_duplicate"]!r}')
        for key, value in cfg.get('custom_keys', {}).items():
            if not isinstance(value, Mapping):
                raise ValueError(f'paramwise_cfg.custom_keys[{key!r}] must be a dict with '
                                 f'lr_mult and/or decay_mult, got {value!r}')
            for field_name, mult in value.items():
                if field_name not in CUSTOM_KEY_FIELDS:
                    raise ValueError(f'paramwise_cfg.custom_keys[{key!r}] may set lr_mult and '
                                     f'decay_mult only, got {field_name!r}')
                if not _is_number(mult) or mult < 0:
                    raise ValueError(f'paramwise_cfg.custom_keys[{key!r}].{field_name} must be '
                                     f'a number >= 0, got {mult!r}')
        if 'part_weight_decay' in cfg:
            part_wd = cfg['part_weight_decay']
            if not isinstance(part_wd, Mapping) or not part_wd:
                raise ValueError('paramwise_cfg.part_weight_decay must be a non-empty dict '
                                 f'{{part: weight_decay}}, got {part_wd!r}')
            check_parts(list(part_wd), 'paramwise_cfg.part_weight_decay')
            for part, value in part_wd.items():
                if not _is_number(value) or value < 0:
                    raise ValueError(f'paramwise_cfg.part_weight_decay[{part!r}] must be a '
                                     f'number >= 0, got {value!r}')
        if 'no_decay_rule_parts' in cfg:
            rule_parts = cfg['no_decay_rule_parts']
            if not isinstance(rule_parts, (list, tuple)) or not rule_parts:
                raise ValueError('paramwise_cfg.no_decay_rule_parts must be a non-empty list of '
                                 f"parts such as ('backbone',), got {rule_parts!r}")
            check_parts(list(rule_parts), 'paramwise_cfg.no_decay_rule_parts')
        if not _is_number(self.base_lr) or self.base_lr <= 0:
            raise ValueError(f'optimizer.lr must be a positive number for {name}, '
                             f'got {self.base_lr!r}')
        if not _is_number(self.base_wd) or self.base_wd < 0:
            raise ValueError(f'optimizer.weight_decay must be set to a number >= 0 for {name}, '
                             f'got {self.base_wd!r}')

    @property
    def num_layers(self) -> int:
        """``L`` of the rule."""
        return self.paramwise_cfg['num_layers']

    @property
    def decay_rate(self) -> float:
        """Learning-rate decay per layer id."""
        return self.paramwise_cfg['decay_rate']

    @property
    def decay_type(self) -> str:
        """``'layer_wise'`` or ``'stage_wise'``."""
        return self.paramwise_cfg.get('decay_type', 'layer_wise')

    @property
    def part_weight_decay(self) -> dict[str, float]:
        """``{part: weight decay}`` in place of the optimizer's (``paramwise_cfg``)."""
        return dict(self.paramwise_cfg.get('part_weight_decay', {}))

    @property
    def no_decay_rule_parts(self) -> tuple[str, ...] | None:
        """Parts the zero-decay rule is limited to; None: the whole model."""
        parts = self.paramwise_cfg.get('no_decay_rule_parts')
        return None if parts is None else tuple(parts)

    def weight_decay_of(self, name: str,
                        shape: torch.Size | nn.Parameter) -> tuple[float, str | None]:
        """(weight decay before ``custom_keys``' ``decay_mult``, part) of parameter ``name``."""
        part = part_of(name, self.part_weight_decay)
        rule_parts = self.no_decay_rule_parts
        if (rule_parts is None or part_of(name, rule_parts)) and is_no_decay(name, shape):
            return 0.0, part
        return self.part_weight_decay.get(part, self.base_wd), part

    def _custom_key(self, name: str) -> str | None:
        """The longest ``custom_keys`` entry contained in ``name`` (ties: alphabetical)."""
        keys = self.paramwise_cfg.get('custom_keys', {})
        for key in sorted(sorted(keys), key=len, reverse=True):
            if key in name:
                return key
        return None

    def _check_model(self, module: nn.Module, names: list[str]) -> None:
        model = module
        while not hasattr(model, 'backbone') and isinstance(getattr(model, 'module', None),
                                                             nn.Module):
            model = model.module
        if not isinstance(getattr(model, 'backbone', None), nn.Module):
            raise ValueError(f'{type(self).__name__} needs a model with a `backbone` attribute '
                             f'(a detector or segmentor), got {type(model).__name__} without one')
        ids = {n: get_layer_id(n, self.num_layers, self.decay_type)
               for n in names if n.startswith((DOWNSAMPLE_PREFIX, STAGES_PREFIX))}
        if not ids:
            raise ValueError(f'{type(self).__name__} expects a ConvNeXt-style backbone (parameters '
                             'backbone.downsample_layers.* and backbone.stages.*), got '
                             f'{type(model.backbone).__name__} without such parameters')
        worst = max(ids, key=ids.__getitem__)
        worst_id = ids[worst]
        if worst_id > self.num_layers:
            raise ValueError(
                f'num_layers={self.num_layers} is too small for this backbone: {worst} gets '
                f'{self.decay_type} id {worst_id} > num_layers, so its lr would exceed '
                f'the layers above it; expected num_layers >= {worst_id} (the official recipes '
                'use 6 for ConvNeXt-T and 12 for S/B/L/XL)')
        for key in ('part_weight_decay', 'no_decay_rule_parts'):
            for part in self.paramwise_cfg.get(key, ()):
                if not any(part_of(n, [part]) for n in names):
                    tops = sorted({n.split('.')[0] for n in names})
                    raise ValueError(
                        f'paramwise_cfg.{key}: {part!r} holds no parameter of '
                        f'{type(model).__name__}; its parts are {", ".join(tops)} (and the '
                        'modules inside them)')

    #: Original parameter shapes of the model given to ``__call__`` (see there).
    _param_shapes: dict[str, torch.Size] | None = None

    def __call__(self, model: nn.Module) -> OptimWrapper:
        """Build the optimizer wrapper for ``model`` (plain, DDP- or FSDP-wrapped).

        mmengine unwraps ``model.module`` before :meth:`add_params`; under FSDP the
        original parameter shapes are read here, from the wrapper, first.
        """
        self._param_shapes = original_param_shapes(model)
        try:
            return super().__call__(model)
        finally:
            self._param_shapes = None

    def add_params(self, params: list[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module: int | float | None = None) -> None:
        """Append one param group per (layer id, part, decay/no decay, custom key) to ``params``.

        Weight decay follows each parameter's original shape, also under FSDP, where
        every rank holds 1-D shards. ``prefix`` and ``is_dcn_module`` exist for
        signature compatibility with mmengine's recursive implementation and are not used.
        """
        named = [(strip_wrapper_prefix(n), p) for n, p in module.named_parameters()]
        shapes = self._param_shapes
        if shapes is None or any(n not in shapes for n, _ in named):
            shapes = original_param_shapes(module)
        self._check_model(module, [n for n, _ in named])
        custom_keys = self.paramwise_cfg.get('custom_keys', {})
        groups: dict[tuple[int, str | None, float, str | None], _Group] = {}
        for name, param in named:
            if not param.requires_grad:
                continue
            layer_id = get_layer_id(name, self.num_layers, self.decay_type)
            weight_decay, part = self.weight_decay_of(name, shapes[name])
            key = self._custom_key(name)
            group = groups.get((layer_id, part, weight_decay, key))
            if group is None:
                mults = custom_keys.get(key, {})
                scale = get_lr_scale(layer_id, self.num_layers, self.decay_rate)
                group = groups[(layer_id, part, weight_decay, key)] = _Group(
                    layer_id=layer_id, lr_scale=scale,
                    lr=self.base_lr * scale * mults.get('lr_mult', 1.0),
                    weight_decay=weight_decay * mults.get('decay_mult', 1.0),
                    custom_key=key, part=part)
            group.params.append(param)
            group.numel += shapes[name].numel()
        ordered = sorted(groups.values(), key=lambda g: (
            g.layer_id, g.part or '', g.custom_key or '', -g.weight_decay))
        params.extend(g.as_param_group() for g in ordered)
        if get_rank() == 0:
            header = (f'{type(self).__name__}: {self.decay_type} decay, decay_rate='
                      f'{self.decay_rate}, num_layers={self.num_layers}, lr={self.base_lr}, '
                      f'weight_decay={self.base_wd}; {len(ordered)} groups')
            MMLogger.get_current_instance().info(_format_table(ordered, header))
