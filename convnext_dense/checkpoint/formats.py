"""Checkpoint layouts of ConvNeXt and their key mappings to this backbone's layout.

This backbone uses the paper's official names, so the official release maps
1:1. Each ``*_to_official`` function takes a flat state dict of one layout and
returns ``(converted, dropped)``: the backbone's tensors, and the names of the
classifier (or non-backbone) tensors that were left out. A key that is neither
raises :class:`~convnext_dense.checkpoint.io.CheckpointError`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch

from .io import CheckpointError

StateDict = dict[str, torch.Tensor]

#: Keys of this backbone's (the official) layout.
_OFFICIAL_BACKBONE_KEY = re.compile(
    r'^(downsample_layers\.\d+\.[01]\.(weight|bias)'
    r'|stages\.\d+\.\d+\.(dwconv|norm|pwconv1|pwconv2)\.(weight|bias)'
    r'|stages\.\d+\.\d+\.(gamma|grn\.gamma|grn\.beta)'
    r'|norm[0-3]\.(weight|bias))$')

#: timm key patterns -> official key templates.
_TIMM_RULES = tuple((re.compile(pattern), template) for pattern, template in (
    (r'^stem\.(\d+)\.', r'downsample_layers.0.\1.'),
    (r'^stages\.(\d+)\.downsample\.(\d+)\.', r'downsample_layers.\1.\2.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.', r'stages.\1.\2.dwconv.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.norm\.', r'stages.\1.\2.norm.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc(\d)\.', r'stages.\1.\2.pwconv\3.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight$', r'stages.\1.\2.grn.gamma'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias$', r'stages.\1.\2.grn.beta'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.gamma$', r'stages.\1.\2.gamma'),
))

#: mmpretrain block names -> official block names.
_MMPRETRAIN_RULES = tuple((re.compile(pattern), template) for pattern, template in (
    (r'^stages\.(\d+)\.(\d+)\.depthwise_conv\.', r'stages.\1.\2.dwconv.'),
    (r'^stages\.(\d+)\.(\d+)\.pointwise_conv(\d)\.', r'stages.\1.\2.pwconv\3.'),
))


def _normalise_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    """Bring layout-specific shapes to the official ones."""
    if '.pwconv' in key and key.endswith('.weight') and value.dim() == 4:
        return value.flatten(1)  # a 1x1 conv used as the MLP's linear layer
    if '.grn.' in key:
        return value.reshape(1, 1, 1, -1)  # GRN parameters are (1, 1, 1, C) officially
    return value


def _apply_rules(key: str, rules: Iterable[tuple[re.Pattern[str], str]],
                 unmatched: str | None = None) -> str | None:
    """Rewrite ``key`` by the first matching rule; ``unmatched`` if none matches."""
    for pattern, template in rules:
        new_key, count = pattern.subn(template, key)
        if count:
            return new_key
    return unmatched


def _convert(state_dict: StateDict, layout: str, rename: Callable[[str], str | None],
             is_dropped: Callable[[str], bool]) -> tuple[StateDict, list[str]]:
    converted: StateDict = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if is_dropped(key):
            dropped.append(key)
            continue
        new_key = rename(key)
        if new_key is None or not _OFFICIAL_BACKBONE_KEY.match(new_key):
            raise CheckpointError(f'{layout} key {key!r} has no counterpart in the ConvNeXt '
                                  'backbone (expected downsample_layers.*, stages.*, norm*)')
        converted[new_key] = _normalise_tensor(new_key, value)
    return converted, dropped


def is_classifier(state_dict: StateDict) -> bool:
    """An ImageNet classifier has a ``head``; its last ``norm`` is the classifier's too."""
    return any(k.startswith(('head.', 'backbone.head.')) for k in state_dict)


def official_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """The paper's release (V1 and V2): drop ``head.*`` and the final ``norm.*``."""
    return _convert(state_dict, 'official', lambda k: k,
                    lambda k: k.startswith(('head.', 'norm.')))


def timm_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """timm's layout, including its ``conv_mlp`` variants and V2 GRN parameters.

    ``stem.*``, ``stages.N.downsample.*``, ``stages.N.blocks.M.conv_dw/norm/
    mlp.fc1/mlp.fc2/gamma``; ``mlp.grn.weight/bias`` of shape ``(C,)``. The
    classifier (``head.*``, ``norm_pre.*``) is dropped.
    """
    return _convert(state_dict, 'timm', lambda k: _apply_rules(k, _TIMM_RULES),
                    lambda k: k.startswith(('head.', 'norm_pre.')))


def mmpretrain_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """mmpretrain's ConvNeXt (``backbone.`` prefix, ``depthwise_conv``/``pointwise_conv*``).

    In a classifier checkpoint the backbone's ``norm3`` is the classifier's
    final norm (applied after pooling) and is dropped with ``head.*``; in a
    dense-prediction checkpoint the ``norm{i}`` are the per-stage output norms
    and are kept. Keys outside ``backbone.`` are dropped.
    """
    classifier = is_classifier(state_dict)

    def dropped(key: str) -> bool:
        return not key.startswith('backbone.') or (
            classifier and re.match(r'^backbone\.norm\d\.', key) is not None)

    return _convert(state_dict, 'mmpretrain',
                    lambda k: _apply_rules(k[len('backbone.'):], _MMPRETRAIN_RULES,
                                           unmatched=k[len('backbone.'):]), dropped)


def dense_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """A whole mmdet/mmseg model with this backbone: take ``backbone.*``, drop the rest."""
    return _convert(state_dict, 'mmdet/mmseg', lambda k: k[len('backbone.'):],
                    lambda k: not k.startswith('backbone.'))


#: Layout name -> converter.
CONVERTERS: dict[str, Callable[[StateDict], tuple[StateDict, list[str]]]] = {
    'official': official_to_official,
    'timm': timm_to_official,
    'mmpretrain': mmpretrain_to_official,
    'mmdet/mmseg': dense_to_official,
}


def detect_format(state_dict: StateDict) -> str | None:
    """Name the layout of a flat ConvNeXt state dict from its keys; None if unknown."""
    keys = list(state_dict)

    def has(pattern: str) -> bool:
        regex = re.compile(pattern)
        return any(regex.search(k) for k in keys)

    if has(r'^stem\.\d+\.') and has(r'^stages\.\d+\.blocks\.\d+\.'):
        return 'timm'
    if has(r'^backbone\.stages\.\d+\.\d+\.depthwise_conv\.'):
        return 'mmpretrain'
    for prefix, layout in ((r'backbone\.', 'mmdet/mmseg'), ('', 'official')):
        stem = has('^' + prefix + r'downsample_layers\.0\.0\.')
        if stem and has('^' + prefix + r'stages\.\d+\.\d+\.dwconv\.'):
            return layout
    return None
