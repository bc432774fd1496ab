"""mmpretrain's ConvNeXt (``backbone.`` prefix, ``depthwise_conv``/``pointwise_conv*``).

The same names are used by the ConvNeXt configs of mmdet 3.x and mmseg 1.x, whose
backbone is ``mmpretrain.ConvNeXt``.
"""
from __future__ import annotations

import re

from .common import StateDict, apply_rules, compile_rules, convert_keys, has_key

#: mmpretrain block names -> official block names (keys without ``backbone.``).
BLOCK_RULES = compile_rules(
    (r'^stages\.(\d+)\.(\d+)\.depthwise_conv\.', r'stages.\1.\2.dwconv.'),
    (r'^stages\.(\d+)\.(\d+)\.pointwise_conv(\d)\.', r'stages.\1.\2.pwconv\3.'),
)


def rename_backbone_key(key: str) -> str:
    """An mmpretrain backbone key (without ``backbone.``) under its official name."""
    return apply_rules(key, BLOCK_RULES, unmatched=key)


def is_classifier(state_dict: StateDict) -> bool:
    """An ImageNet classifier has a ``head``; its last ``norm`` is the classifier's too."""
    return any(k.startswith(('head.', 'backbone.head.')) for k in state_dict)


def mmpretrain_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """mmpretrain's layout to the official one.

    In a classifier checkpoint the backbone's ``norm3`` is the classifier's
    final norm (applied after pooling) and is dropped with ``head.*``; in a
    dense-prediction checkpoint the ``norm{i}`` are the per-stage output norms
    and are kept. Keys outside ``backbone.`` are dropped.
    """
    classifier = is_classifier(state_dict)

    def dropped(key: str) -> bool:
        return not key.startswith('backbone.') or (
            classifier and re.match(r'^backbone\.norm\d\.', key) is not None)

    return convert_keys(state_dict, 'mmpretrain',
                        lambda k: rename_backbone_key(k[len('backbone.'):]), dropped)


def is_mmpretrain(keys: list[str]) -> bool:
    return has_key(keys, r'^backbone\.stages\.\d+\.\d+\.depthwise_conv\.')
