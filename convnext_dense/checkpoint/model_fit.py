"""Whether a whole model's weights fit a built model, and what differs, in words.

Used where trained weights meet a config's model: ``tools/convert_checkpoint.py --whole
--config`` (before anything is written),
:func:`convnext_dense.apis.models.load_trained_weights` (``tools/infer.py``, exports),
``tools/test.py`` (a misfit is refused before the runner evaluates) and training with
``load_from`` (a misfit is logged as a warning: fine-tuning on another class count is
normal, and mmengine loads what fits). Besides the first missing, unexpected and wrongly
shaped keys, a misfit is named: number of classes, head type (a Mask R-CNN checkpoint for
a Cascade config, a segmentor for a detector), backbone arch, and the OpenMMLab stack of a
DINO checkpoint (its decoder's ``ref_point_head`` takes ``embed_dims * 2`` inputs in
upstream mmdet 3.3.0 and ``embed_dims * 4`` in onedl-mmdetection: :func:`dino_stack`).
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterable

import torch
from torch import nn

from ..stack import STACKS
from ..utils import first_n_and_more
from .convert import ArchInfo
from .errors import CheckpointError
from .io import read_checkpoint
from .layouts import detect_format
from .layouts.common import StateDict
from .safe_loading import mmengine_safe_globals

#: Last module names of class-score layers (their output rows count classes).
_CLASSIFIERS = ('fc_cls', 'conv_logits', 'conv_seg', 'conv_cls')
_MAX_LISTED = 4
_BACKBONE = 'backbone.'
#: DINO's decoder: input width of ``ref_point_head`` in multiples of ``embed_dims`` -> the
#: stack whose mmdet builds it that way
DINO_REF_POINT_INPUTS = {2: 'upstream', 4: 'onedl'}
_REF_POINT_WEIGHT = 'ref_point_head.layers.0.weight'


def dino_stack(state_dict: StateDict) -> str | None:
    """The stack (``'upstream'`` or ``'onedl'``) a DINO model's weights were built with,
    read from its decoder's ``ref_point_head``; None for other models."""
    for key, value in state_dict.items():
        if key.endswith('decoder.' + _REF_POINT_WEIGHT) and value.ndim == 2:
            stack = _stack_of_ref_point_weight(value.shape)
            if stack is not None:
                return stack
    return None


def _stack_of_ref_point_weight(shape: torch.Size) -> str | None:
    embed_dims, inputs = shape
    return DINO_REF_POINT_INPUTS.get(inputs // embed_dims) if inputs % embed_dims == 0 else None


def _mmdet_of(stack: str) -> str:
    dist, version = STACKS[stack]['mmdet']
    return f'{dist} {version}'


def _dino_stack_problem(model: nn.Module, key: str, actual: torch.Size,
                        expected: torch.Size) -> str | None:
    """Name the stacks when a DINO decoder's ``ref_point_head`` differs only by stack."""
    if not key.endswith(_REF_POINT_WEIGHT) or len(actual) != 2 or len(expected) != 2:
        return None
    owner = model.get_submodule(key[:-len(_REF_POINT_WEIGHT)].rstrip('.'))
    if type(owner).__name__ != 'DinoTransformerDecoder' or actual[0] != expected[0]:
        return None
    checkpoint, config = _stack_of_ref_point_weight(actual), _stack_of_ref_point_weight(expected)
    if checkpoint is None or config is None or checkpoint == config:
        return None
    return (f'OpenMMLab stack: this DINO checkpoint was made with the {checkpoint} stack '
            f'({_mmdet_of(checkpoint)}: ref_point_head takes embed_dims * {actual[1] // actual[0]}'
            f' inputs), the config\'s model is built by the {config} stack installed here '
            f'({_mmdet_of(config)}: embed_dims * {expected[1] // expected[0]}); a DINO checkpoint '
            f'only loads on the stack it was made with: use it where the {checkpoint} stack is '
            f'installed (make ... STACK={checkpoint})')


def describe_model(keys: Iterable[str]) -> str:
    """Name the kind of model a state dict's keys belong to, with its heads.

    ``'Cascade Mask R-CNN (3 box-head stages of 4 shared convs + 1 shared fc, mask heads)'``,
    ``'Mask R-CNN (one box head of 2 shared fcs, mask head)'``,
    ``'segmentor (decode_head, auxiliary_head)'``, ``'one-stage detector (bbox_head)'``.
    """
    keys = list(keys)
    parts = sorted({k.split('.')[0] for k in keys} - {'backbone', 'neck', 'data_preprocessor'})
    if 'decode_head' in parts:
        return f'segmentor ({", ".join(parts)})'
    if 'roi_head' not in parts:
        return f'one-stage detector ({", ".join(parts)})' if 'bbox_head' in parts else \
            f'model with {", ".join(parts) or "a backbone only"}'
    stages = {m[1] for k in keys if (m := re.match(r'^roi_head\.bbox_head\.(\d+)\.', k))}
    masks = any(k.startswith('roi_head.mask_head.') for k in keys)
    box = _box_head_layers(keys, 'roi_head.bbox_head.0.' if stages else 'roi_head.bbox_head.')
    if stages:
        return (f'Cascade {"Mask " if masks else ""}R-CNN ({len(stages)} box-head stages{box}'
                f'{", mask heads" if masks else ""})')
    return (f'{"Mask" if masks else "Faster"} R-CNN (one box head{box}'
            f'{", mask head" if masks else ""})')


def _box_head_layers(keys: list[str], prefix: str) -> str:
    """`` of 4 shared convs + 1 shared fc`` for a ``ConvFCBBoxHead`` at ``prefix``."""
    counts = []
    for layer, name in (('shared_convs', 'shared conv'), ('shared_fcs', 'shared fc')):
        pattern = re.compile(re.escape(prefix + layer) + r'\.(\d+)\.')
        n = len({m[1] for k in keys if (m := pattern.match(k))})
        if n:
            counts.append(f'{n} {name}{"s" if n > 1 else ""}')
    return f' of {" + ".join(counts)}' if counts else ''


def _num_classes(model: nn.Module, key: str) -> int | None:
    """``num_classes`` of the head that owns the class-score layer ``key``, if it is one."""
    parts = key.split('.')
    if len(parts) < 3 or parts[-2] not in _CLASSIFIERS:
        return None
    for end in range(len(parts) - 2, 0, -1):
        owner = model.get_submodule('.'.join(parts[:end]))
        if isinstance(getattr(owner, 'num_classes', None), int):
            return owner.num_classes
    return None


def _shape_problem(model: nn.Module, key: str, actual: torch.Size,
                   expected: torch.Size) -> tuple[str, str | None]:
    """Describe one shape mismatch, and the number-of-classes difference it shows."""
    line = f'{key}: checkpoint {tuple(actual)} vs config {tuple(expected)}'
    config_classes = _num_classes(model, key)
    if config_classes is None or actual[1:] != expected[1:]:
        return line, None
    checkpoint_classes = config_classes + actual[0] - expected[0]
    words = f'the config has {config_classes} classes, the checkpoint {checkpoint_classes}'
    return f'{line}: {words}', f'number of classes: {words}'


def _model_arch(model: nn.Module) -> ArchInfo | str:
    """The arch of ``model``'s backbone, or what the backbone is when not a ConvNeXt."""
    backbone = getattr(model, 'backbone', None)
    if all(hasattr(backbone, name) for name in ('depths', 'dims', 'use_grn', 'stages')):
        return ArchInfo.of_model(backbone)
    return f'a {type(backbone).__name__} (not this project\'s ConvNeXt)'


def _checkpoint_arch(state_dict: StateDict) -> ArchInfo | None:
    """The ConvNeXt arch of a whole model's ``backbone.*`` weights (None if not readable)."""
    backbone = {k[len(_BACKBONE):]: v for k, v in state_dict.items() if k.startswith(_BACKBONE)}
    try:
        return ArchInfo.of_state_dict(backbone, 'backbone')
    except CheckpointError:
        return None


def misfit(state_dict: StateDict, model: nn.Module) -> tuple[list[str], list[str]]:
    """Compare every key and shape of a whole model's weights with ``model``.

    Returns ``(differences in words, mismatching keys)``: the keys as one line each for
    shapes, unexpected and missing keys (the first few of each); both empty when all fit.
    """
    expected = model.state_dict()
    reasons: list[str] = []
    classifiers, shapes = [], []  # the class-score layers' lines first: they say the most
    for key, value in expected.items():
        actual = state_dict.get(key)
        if actual is not None and actual.shape != value.shape:
            line, reason = _shape_problem(model, key, actual.shape, value.shape)
            (classifiers if reason else shapes).append(line)
            if reason and reason not in reasons:
                reasons.append(reason)
            stack = _dino_stack_problem(model, key, actual.shape, value.shape)
            if stack is not None:
                reasons.insert(0, stack)
    shapes = classifiers + shapes
    unexpected = [k for k in state_dict if k not in expected]
    missing = [k for k in expected if k not in state_dict]
    lines = [f'wrong shape {len(shapes)}: ' + first_n_and_more(shapes, _MAX_LISTED, sep='; ')
             ] if shapes else []
    lines += [f'{what} {len(keys)}: {first_n_and_more(keys, _MAX_LISTED)}'
              for what, keys in (('unexpected', unexpected), ('missing', missing)) if keys]
    if not lines:
        return [], []
    checkpoint_model, config_model = describe_model(state_dict), describe_model(expected)
    if checkpoint_model != config_model:
        reasons.insert(0, f'head type: the checkpoint is a {checkpoint_model}, the config a '
                          f'{config_model}')
    checkpoint_arch, config_arch = _checkpoint_arch(state_dict), _model_arch(model)
    if checkpoint_arch is not None and config_arch != checkpoint_arch:
        reasons.append(f'backbone arch: the checkpoint has ConvNeXt {checkpoint_arch}, the '
                       f'config {config_arch}')
    backbone = {k: v for k, v in state_dict.items() if k.startswith(_BACKBONE)}
    if backbone and detect_format(backbone) == 'mmpretrain':
        reasons.insert(0, 'the backbone has mmpretrain\'s names (an mmdet 3.x / mmseg 1.x '
                          'ConvNeXt model): convert it first with tools/convert_checkpoint.py '
                          '--whole SRC DST --config CONFIG')
    return reasons, lines


def describe_misfit(state_dict: StateDict, model: nn.Module, source: str,
                    target: str) -> str | None:
    """One message naming what in ``source``'s weights does not fit ``target``'s ``model``
    (None when every key and shape fits)."""
    reasons, lines = misfit(state_dict, model)
    if not lines:
        return None
    words = '; '.join(reasons) if reasons else 'keys differ'
    return f'{source} does not fit {target} ({type(model).__name__}): {words}. ' + \
        '. '.join(lines)


def read_model_weights(checkpoint: str | os.PathLike) -> StateDict:
    """A whole model's weights from an mmengine checkpoint or a bare state dict, keyed as
    mmengine loads them (``state_dict`` taken, a DDP ``module.`` prefix removed).

    Raises:
        CheckpointError: the file cannot be read safely (see
            :func:`~convnext_dense.checkpoint.io.read_checkpoint`).
    """
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        loaded = read_checkpoint(checkpoint)
    state = loaded.get('state_dict', loaded)
    return {k.removeprefix('module.'): v for k, v in state.items()}


__all__ = ['DINO_REF_POINT_INPUTS', 'describe_misfit', 'describe_model', 'dino_stack', 'misfit',
           'read_model_weights']
