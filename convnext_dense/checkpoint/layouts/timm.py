"""timm's ConvNeXt (V1 and V2), including its ``conv_mlp`` variants.

``stem.*``, ``stages.N.downsample.*``, ``stages.N.blocks.M.conv_dw/norm/mlp.fc1/
mlp.fc2/gamma``; V2's ``mlp.grn.weight/bias`` of shape ``(C,)``. The classifier
(``head.*``, ``norm_pre.*``) is dropped.
"""
from __future__ import annotations

from .common import StateDict, apply_rules, compile_rules, convert_keys, has_key

_RULES = compile_rules(
    (r'^stem\.(\d+)\.', r'downsample_layers.0.\1.'),
    (r'^stages\.(\d+)\.downsample\.(\d+)\.', r'downsample_layers.\1.\2.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.conv_dw\.', r'stages.\1.\2.dwconv.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.norm\.', r'stages.\1.\2.norm.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.fc(\d)\.', r'stages.\1.\2.pwconv\3.'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.weight$', r'stages.\1.\2.grn.gamma'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.mlp\.grn\.bias$', r'stages.\1.\2.grn.beta'),
    (r'^stages\.(\d+)\.blocks\.(\d+)\.gamma$', r'stages.\1.\2.gamma'),
)


def timm_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """timm's layout to the official one (see the module docstring)."""
    return convert_keys(state_dict, 'timm', lambda k: apply_rules(k, _RULES),
                        lambda k: k.startswith(('head.', 'norm_pre.')))


def is_timm(keys: list[str]) -> bool:
    return has_key(keys, r'^stem\.\d+\.') and has_key(keys, r'^stages\.\d+\.blocks\.\d+\.')
