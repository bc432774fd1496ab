"""Key mappings between checkpoint layouts and this backbone's (the official) layout."""
from __future__ import annotations

import re

import torch

#: timm key patterns -> official/backbone key templates (applied in order).
_TIMM_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern), template) for pattern, template in (
        (r'^stem\.(\d+)\.', r'downsample_layers.0.\1.'),
        (r'^stages\.(\d+)\.downsample\.(\d+)\.', r'downsample_layers.\1.\2.'),
        (r'^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.', r'stages.\1.\2.dwconv.'),
        (r'^stages\.(\d+)\.blocks\.(\d+)\.norm\.', r'stages.\1.\2.norm.'),
        (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc(\d)\.', r'stages.\1.\2.pwconv\3.'),
        (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight$', r'stages.\1.\2.grn.gamma'),
        (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias$', r'stages.\1.\2.grn.beta'),
        (r'^stages\.(\d+)\.blocks\.(\d+)\.gamma$', r'stages.\1.\2.gamma'),
    ))

#: timm keys that belong to the classifier and have no place in the backbone.
TIMM_CLASSIFIER_PREFIXES = ('head.', 'norm_pre.')


def timm_key_to_official(key: str) -> str | None:
    """Map one timm ConvNeXt key to the official layout; None if it has no rule."""
    for pattern, template in _TIMM_RULES:
        new_key, count = pattern.subn(template, key)
        if count:
            return new_key
    return None


StateDict = dict[str, torch.Tensor]


def timm_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """Convert a timm ConvNeXt state dict to this backbone's layout.

    Handles timm's ``conv_mlp`` variants (1x1-conv MLPs become linear layers)
    and GRN parameters (``mlp.grn.weight/bias`` of shape ``(C,)`` become
    ``grn.gamma/beta`` of shape ``(1, 1, 1, C)``).

    Returns:
        The converted state dict and the list of dropped classifier keys.

    Raises:
        KeyError: a key that is neither a backbone nor a classifier key.
    """
    converted: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state_dict.items():
        if key.startswith(TIMM_CLASSIFIER_PREFIXES):
            dropped.append(key)
            continue
        new_key = timm_key_to_official(key)
        if new_key is None:
            raise KeyError(f'timm key {key!r} has no counterpart in the ConvNeXt backbone')
        if '.pwconv' in new_key and new_key.endswith('.weight') and value.dim() == 4:
            value = value.flatten(1)  # 1x1 conv (timm conv_mlp) -> linear
        elif '.grn.' in new_key:
            value = value.reshape(1, 1, 1, -1)
        converted[new_key] = value
    return converted, dropped
