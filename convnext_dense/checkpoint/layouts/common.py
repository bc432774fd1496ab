"""What every layout converter shares: the target key names and the renaming machinery.

A converter takes a flat state dict of its layout and returns ``(converted,
dropped)``: the backbone's tensors under this backbone's (the official
release's) names and shapes, and the names of the tensors that are not part
of the backbone (classifier heads, pre-training decoders), which are left out
and reported. A key that is neither raises
:class:`~convnext_dense.checkpoint.errors.CheckpointError` naming it.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import torch

from ..errors import CheckpointError

StateDict = dict[str, torch.Tensor]
Rules = tuple[tuple[re.Pattern[str], str], ...]
Converter = Callable[[StateDict], tuple[StateDict, list[str]]]

#: Keys of this backbone's (the official) layout.
OFFICIAL_BACKBONE_KEY = re.compile(
    r'^(downsample_layers\.\d+\.[01]\.(weight|bias)'
    r'|stages\.\d+\.\d+\.(dwconv|norm|pwconv1|pwconv2)\.(weight|bias)'
    r'|stages\.\d+\.\d+\.(gamma|grn\.gamma|grn\.beta)'
    r'|norm[0-3]\.(weight|bias))$')


def compile_rules(*pairs: tuple[str, str]) -> Rules:
    """``(regex, template)`` pairs, tried in order by :func:`apply_rules`."""
    return tuple((re.compile(pattern), template) for pattern, template in pairs)


def apply_rules(key: str, rules: Iterable[tuple[re.Pattern[str], str]],
                unmatched: str | None = None) -> str | None:
    """Rewrite ``key`` by the first matching rule; ``unmatched`` if none matches."""
    for pattern, template in rules:
        new_key, count = pattern.subn(template, key)
        if count:
            return new_key
    return unmatched


def strip_prefix(key: str, prefixes: Iterable[str]) -> str:
    """``key`` without the first of ``prefixes`` it starts with."""
    for prefix in prefixes:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def normalise_tensor(key: str, value: torch.Tensor) -> torch.Tensor:
    """Bring layout-specific shapes of an official ``key`` to the official ones."""
    if '.pwconv' in key and key.endswith('.weight') and value.dim() == 4:
        return value.flatten(1)  # a 1x1 conv used as the MLP's linear layer
    if '.grn.' in key:
        return value.reshape(1, 1, 1, -1)  # GRN parameters are (1, 1, 1, C) officially
    if key.endswith('.bias') and value.dim() == 2 and value.shape[0] == 1:
        return value.reshape(-1)  # sparse (MinkowskiEngine) layers store biases as (1, C)
    return value


def convert_keys(state_dict: StateDict, layout: str, rename: Callable[[str], str | None],
                 is_dropped: Callable[[str], bool]) -> tuple[StateDict, list[str]]:
    """Rename every kept key to the official layout; fail on a key that fits nothing."""
    converted: StateDict = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if is_dropped(key):
            dropped.append(key)
            continue
        new_key = rename(key)
        if new_key is None or not OFFICIAL_BACKBONE_KEY.match(new_key):
            raise CheckpointError(f'{layout} key {key!r} has no counterpart in the ConvNeXt '
                                  'backbone (expected downsample_layers.*, stages.*, norm*)')
        converted[new_key] = normalise_tensor(new_key, value)
    return converted, dropped


def has_key(keys: Iterable[str], pattern: str) -> bool:
    """Whether any of ``keys`` matches the regex ``pattern`` (``re.search``)."""
    regex = re.compile(pattern)
    return any(regex.search(k) for k in keys)
