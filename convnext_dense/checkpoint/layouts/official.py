"""Layouts that already use the official names: the paper's release, DINOv3, whole models.

* ``official``: the ConvNeXt (V1) and ConvNeXt V2 releases (ImageNet classifiers:
  ``head.*`` and the final, pooled ``norm.*`` are dropped), and this package's own
  converted files (with the per-stage output norms ``norm{i}``, kept).
* ``dinov3``: DINOv3's ConvNeXt (tiny/small/base/large): the official names, no head,
  the final ``norm.*`` and its alias ``norms.3.*`` (``norms.0-2`` are identities without
  parameters); both are dropped.
* ``mmdet/mmseg``: a whole detector/segmentor with this backbone (the paper's mmdet
  2.x / mmseg 0.x release and this package's models): ``backbone.*`` is taken.
"""
from __future__ import annotations

from .common import StateDict, convert_keys, has_key


def official_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """The paper's release (V1 and V2): drop ``head.*`` and the final ``norm.*``."""
    return convert_keys(state_dict, 'official', lambda k: k,
                        lambda k: k.startswith(('head.', 'norm.')))


def dinov3_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """DINOv3 ConvNeXt: drop the final ``norm.*``, its alias ``norms.*`` (and any head)."""
    return convert_keys(state_dict, 'DINOv3', lambda k: k,
                        lambda k: k.startswith(('head.', 'norm.', 'norms.')))


def dense_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """A whole mmdet/mmseg model with this backbone: take ``backbone.*``, drop the rest."""
    return convert_keys(state_dict, 'mmdet/mmseg', lambda k: k[len('backbone.'):],
                        lambda k: not k.startswith('backbone.'))


def is_official(keys: list[str], prefix: str = '') -> bool:
    """The official names (under ``prefix``): a stem and dense depthwise convs."""
    return (has_key(keys, '^' + prefix + r'downsample_layers\.0\.0\.')
            and has_key(keys, '^' + prefix + r'stages\.\d+\.\d+\.dwconv\.weight$'))


def is_dinov3(keys: list[str]) -> bool:
    """Official names plus DINOv3's ``norms.3`` (its alias of the final norm)."""
    return is_official(keys) and has_key(keys, r'^norms\.\d+\.weight$')


def is_dense(keys: list[str]) -> bool:
    """A whole model whose ``backbone.*`` has the official names."""
    return is_official(keys, prefix=r'backbone\.')
