"""Convert pretrained ConvNeXt checkpoints of any common source into this backbone.

Sources: every layout of :mod:`convnext_dense.checkpoint.layouts` (the paper's
release, timm, mmpretrain, Hugging Face files and model directories, DINOv3,
ConvNeXt V2 FCMAE pre-training, whole mmdet/mmseg models). The layout and the
arch are detected from keys and shapes.
"""
from __future__ import annotations

import os
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from mmengine.registry import WEIGHT_INITIALIZERS

from ..arch import ARCH_SETTINGS, NUM_STAGES, arch_name, backbone_state_shapes
from ..utils import first_n_and_more, refuse_overwrite
from .errors import CheckpointError
from .io import read_checkpoint, write_checkpoint_atomically
from .layouts import CONVERTERS, StateDict, describe_foreign, detect_format

if TYPE_CHECKING:
    from ..models.backbone import ConvNeXt

#: Where the weights sit in a checkpoint dict, main weights first.
MAIN_WEIGHT_KEYS = ('model', 'state_dict', 'module')
EMA_WEIGHT_KEYS = ('model_ema', 'state_dict_ema', 'ema_state_dict')
_OUTPUT_NORM = re.compile(r'^norm[0-3]\.')
#: Keys of a stage's downsampling layer or blocks; group 2 is the stage.
_STAGE_KEY = re.compile(r'^(downsample_layers|stages)\.(\d+)\.')
_MAX_LISTED = 5


@dataclass(frozen=True)
class ArchInfo:
    """Shape of a ConvNeXt as read from its weights."""

    depths: tuple[int, ...]
    dims: tuple[int, ...]
    use_grn: bool
    layer_scale: bool

    @property
    def name(self) -> str | None:
        """The arch name with these depths and dims, or None for a custom one."""
        return arch_name(self.depths, self.dims)

    def backbone_kwargs(self) -> dict[str, Any]:
        """Arguments for :class:`ConvNeXt` that build a model these weights fit."""
        shape = dict(arch=self.name) if self.name else dict(depths=self.depths, dims=self.dims)
        return dict(shape, use_grn=self.use_grn,
                    layer_scale_init_value=1e-6 if self.layer_scale else 0.0)

    def __str__(self) -> str:
        shape = (f'depths {"-".join(map(str, self.depths))}, '
                 f'dims {"-".join(map(str, self.dims))}')
        extras = ('V2/GRN' if self.use_grn else 'V1') + (
            ', layer scale' if self.layer_scale else ', no layer scale')
        return f'{self.name or "custom"} ({shape}; {extras})'

    @classmethod
    def of_model(cls, model: ConvNeXt) -> ArchInfo:
        """The model's full arch, also when it builds fewer stages (``num_built_stages``)."""
        return cls(tuple(model.depths), tuple(model.dims), model.use_grn,
                   model.stages[0][0].gamma is not None)

    @classmethod
    def of_state_dict(cls, state_dict: StateDict, source: str) -> ArchInfo:
        dims = []
        for i in range(NUM_STAGES):
            key = f'downsample_layers.{i}.{0 if i == 0 else 1}.weight'
            if key not in state_dict:
                raise CheckpointError(f'{source}: no {key!r}: not a complete ConvNeXt backbone')
            dims.append(state_dict[key].shape[0])
        depths = [0] * NUM_STAGES
        for key in state_dict:
            match = re.match(r'^stages\.(\d+)\.(\d+)\.', key)
            if match:
                stage, block = int(match[1]), int(match[2])
                if stage >= NUM_STAGES:
                    raise CheckpointError(f'{source}: key {key!r}: ConvNeXt has 4 stages')
                depths[stage] = max(depths[stage], block + 1)
        if 0 in depths:
            raise CheckpointError(f'{source}: stage {depths.index(0)} has no blocks')
        return cls(tuple(depths), tuple(dims),
                   use_grn=any('.grn.' in k for k in state_dict),
                   layer_scale=any(k.endswith('.gamma') and '.grn.' not in k
                                   for k in state_dict))


@dataclass
class Conversion:
    """The result of converting one checkpoint."""

    source: str
    src_format: str
    arch: ArchInfo
    state_dict: StateDict
    dropped: list[str] = field(default_factory=list)
    ema: bool = False
    ema_available: bool = False

    @property
    def num_params(self) -> int:
        return sum(v.numel() for v in self.state_dict.values())

    def report(self) -> str:
        """A short human-readable summary of what was converted and dropped."""
        weights = 'EMA weights' if self.ema else (
            'main weights (EMA weights also present: use --ema)' if self.ema_available
            else 'main weights')
        lines = [f'source:    {self.source}',
                 f'format:    {self.src_format}, {weights}',
                 f'arch:      {self.arch}',
                 f'converted: {len(self.state_dict)} tensors, '
                 f'{self.num_params / 1e6:.2f}M parameters',
                 f'dropped:   {len(self.dropped)} tensors' + (
                     f': {summarise_keys(self.dropped)}' if self.dropped else '')]
        return '\n'.join(lines)

    def to_checkpoint(self) -> dict[str, Any]:
        """A checkpoint dict that ``init_cfg`` and mmengine's ``load_checkpoint`` read."""
        meta = dict(source=self.source, src_format=self.src_format, ema=self.ema,
                    arch=self.arch.name, **{k: list(v) if isinstance(v, tuple) else v
                                            for k, v in asdict(self.arch).items()})
        return dict(state_dict=self.state_dict, meta=dict(convnext_dense=meta))


def summarise_keys(keys: list[str]) -> str:
    """List a few names; group long lists by their first component."""
    if len(keys) <= _MAX_LISTED:
        return ', '.join(keys)
    groups = Counter(k.split('.')[0] for k in keys)
    return ', '.join(f'{name}.* ({count})' for name, count in groups.items())


def unwrap(checkpoint: dict[str, Any], ema: bool, source: str) -> tuple[StateDict, bool]:
    """Find the flat state dict in a checkpoint; return it and whether EMA weights exist."""
    ema_key = next((k for k in EMA_WEIGHT_KEYS if isinstance(checkpoint.get(k), dict)), None)
    main_key = next((k for k in MAIN_WEIGHT_KEYS if isinstance(checkpoint.get(k), dict)), None)
    if ema:
        if ema_key is None:
            raise CheckpointError(f'{source}: --ema given but the checkpoint has no EMA weights '
                                  f'(looked for {", ".join(EMA_WEIGHT_KEYS)}; top-level keys: '
                                  f'{summarise_keys(list(checkpoint))})')
        state_dict = checkpoint[ema_key]
    else:
        state_dict = checkpoint[main_key] if main_key else checkpoint
    state_dict = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)} \
        if isinstance(state_dict, dict) else {}
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return state_dict, ema_key is not None


def _mismatches(expected: dict[str, torch.Size], actual: StateDict,
                ignore: re.Pattern[str] = _OUTPUT_NORM) -> list[str]:
    """Describe keys missing, unexpected or of another shape (ignoring output norms)."""
    problems = [f'missing {k}' for k in expected if k not in actual and not ignore.match(k)]
    problems += [f'unexpected {k}' for k in actual if k not in expected and not ignore.match(k)]
    problems += [f'{k}: checkpoint {tuple(actual[k].shape)} vs model {tuple(shape)}'
                 for k, shape in expected.items() if k in actual and actual[k].shape != shape]
    return problems


def _expected_shapes(arch: ArchInfo) -> dict[str, torch.Size]:
    shapes = backbone_state_shapes(arch.depths, arch.dims, arch.use_grn, arch.layer_scale)
    return {k: torch.Size(shape) for k, shape in shapes.items()}


def _fail_on_mismatch(problems: list[str], source: str, detected: str, expected: str) -> None:
    if problems:
        raise CheckpointError(
            f'{source}: weights of {detected} do not fit {expected}; first mismatches: '
            + first_n_and_more(problems, _MAX_LISTED, sep='; '))


def convert_checkpoint(checkpoint: dict[str, Any], source: str = '<in memory>',
                       src_format: str | None = None, arch: str | None = None,
                       ema: bool = False) -> Conversion:
    """Convert a loaded checkpoint dict to this backbone's layout.

    Args:
        checkpoint: What ``torch.load``/safetensors returned.
        source: Name used in messages and the report.
        src_format: A layout name of :data:`~convnext_dense.checkpoint.layouts.LAYOUTS`
            (``official, timm, mmpretrain, huggingface, ...``); detected from the
            keys when None.
        arch: Expected arch name; the conversion fails if the weights are of
            another arch. Detected from the shapes when None.
        ema: Take the EMA weights (``model_ema`` and the like).
    """
    state_dict, ema_available = unwrap(checkpoint, ema, source)
    detected = detect_format(state_dict)
    if src_format is None:
        if detected is None:
            foreign = describe_foreign(list(state_dict))
            what = foreign or \
                f'not a ConvNeXt checkpoint in any known layout ({", ".join(CONVERTERS)})'
            raise CheckpointError(f'{source}: {what}; first keys: '
                                  f'{", ".join(list(state_dict)[:3]) or "none"}')
        src_format = detected
    elif src_format not in CONVERTERS:
        raise CheckpointError(f'src_format must be one of {", ".join(CONVERTERS)}, '
                              f'got {src_format!r}')
    converted, dropped = CONVERTERS[src_format](state_dict)
    info = ArchInfo.of_state_dict(converted, f'{source} ({src_format} layout)')
    _fail_on_mismatch(_mismatches(_expected_shapes(info), converted), source,
                      f'{src_format} layout', f'ConvNeXt {info}')
    if arch is not None:
        if arch not in ARCH_SETTINGS:
            raise CheckpointError(f'arch must be one of {", ".join(ARCH_SETTINGS)}, '
                                  f'got {arch!r}')
        if info.name != arch:
            raise CheckpointError(f'{source}: detected arch {info} ({src_format} layout), '
                                  f'but arch {arch!r} was requested')
    return Conversion(source, src_format, info, converted, dropped, ema, ema_available)


def convert_file(src: str | os.PathLike, src_format: str | None = None,
                 arch: str | None = None, ema: bool = False) -> Conversion:
    """Read ``src`` safely (file, Hugging Face model directory or URL) and convert it.

    See :func:`convert_checkpoint`.
    """
    return convert_checkpoint(read_checkpoint(src), str(src), src_format, arch, ema)


def check_destination(src: str | os.PathLike, dst: str | os.PathLike, force: bool) -> None:
    """Refuse, before any work, to write over ``src`` or (without ``force``) an existing ``dst``."""
    if Path(dst).exists() and Path(src).exists() and Path(dst).samefile(src):
        raise FileExistsError(f'{dst} is the source checkpoint; choose another destination')
    refuse_overwrite(dst, force)


def convert_and_save(src: str | os.PathLike, dst: str | os.PathLike, force: bool = False,
                     **kwargs: Any) -> Conversion:
    """Convert ``src`` and write it atomically to ``dst`` (never overwriting ``src``)."""
    check_destination(src, dst, force)
    conversion = convert_file(src, **kwargs)
    write_checkpoint_atomically(conversion.to_checkpoint(), dst, force=force)
    return conversion


def _not_built(key: str, num_built_stages: int) -> bool:
    """True for a ``downsample_layers.{i}.*``/``stages.{i}.*`` key with ``i`` not built."""
    match = _STAGE_KEY.match(key)
    return match is not None and int(match[2]) >= num_built_stages


def summarise_stage_keys(keys: list[str]) -> str:
    """Group keys by their stage module: ``downsample_layers.3.* (4), stages.3.* (18)``."""
    groups = Counter('.'.join(k.split('.')[:2]) for k in keys)
    in_network_order = sorted(groups, key=lambda name: (int(name.split('.')[1]), name))
    return ', '.join(f'{name}.* ({groups[name]})' for name in in_network_order)


def load_pretrained(model: ConvNeXt, checkpoint: str | os.PathLike) -> Conversion:
    """Load ImageNet (or dense) weights of any known layout into ``model``.

    The per-stage output norms ``norm{i}`` may be missing (ImageNet weights
    have none) or unexpected (a dense checkpoint with other out_indices); they
    are reported. The weights of stages that ``model`` does not build (those
    after the last of its ``out_indices``) must still fit its arch; they are
    skipped and reported. Any other missing or unexpected key, or a shape
    mismatch, is an error that names the file and the detected arch.
    """
    conversion = convert_file(checkpoint)
    model_state = model.state_dict()
    expected = {k: v.shape for k, v in model_state.items()}
    num_built = model.num_built_stages
    if num_built < NUM_STAGES:
        # the checkpoint's unbuilt stages are checked against the model's full arch
        full = _expected_shapes(ArchInfo.of_model(model))
        expected.update({k: shape for k, shape in full.items() if _not_built(k, num_built)})
    _fail_on_mismatch(
        _mismatches(expected, conversion.state_dict),
        str(checkpoint), f'ConvNeXt {conversion.arch} ({conversion.src_format} layout)',
        f'the model, ConvNeXt {ArchInfo.of_model(model)}')
    not_built = [k for k in conversion.state_dict if _not_built(k, num_built)]
    loadable = {k: v for k, v in conversion.state_dict.items() if k in model_state}
    result = model.load_state_dict(loadable, strict=False)
    from mmengine.logging import print_log
    print_log(f'ConvNeXt: loaded pretrained weights\n{conversion.report()}', logger='current')
    if result.missing_keys:
        print_log('ConvNeXt: not in the checkpoint, kept initialised: '
                  + summarise_keys(result.missing_keys), logger='current')
    if not_built:
        print_log(f'ConvNeXt: in the checkpoint but not built (out_indices={model.out_indices}, '
                  f'num_built_stages={num_built}), skipped: {summarise_stage_keys(not_built)}',
                  logger='current')
    unused = sorted(set(conversion.state_dict) - set(loadable) - set(not_built))
    if unused:
        print_log(f'ConvNeXt: in the checkpoint but not in the model: {summarise_keys(unused)}',
                  logger='current')
    return conversion


@WEIGHT_INITIALIZERS.register_module(name='ConvNeXtPretrained')
class ConvNeXtPretrainedInit:
    """mmengine weight initialiser: :func:`load_pretrained` of any known layout, for configs
    that name it: ``init_cfg=dict(type='ConvNeXtPretrained', checkpoint=...)`` (mmengine
    builds it from ``WEIGHT_INITIALIZERS``).

    For ``init_cfg=dict(type='Pretrained', checkpoint=...)``,
    :meth:`~convnext_dense.models.backbone.ConvNeXt.init_weights` calls
    :func:`load_pretrained` itself: the model imports this module (``models`` sits above
    ``checkpoint``; nothing here imports the model but for type annotations).
    """

    def __init__(self, checkpoint: str | os.PathLike) -> None:
        self.checkpoint = checkpoint

    def __call__(self, module: ConvNeXt) -> None:
        load_pretrained(module, self.checkpoint)
