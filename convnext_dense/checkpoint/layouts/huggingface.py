"""Hugging Face transformers' ConvNeXt models and their saved model directories.

``huggingface``: ``ConvNextModel``, ``ConvNextV2Model``, their
``...ForImageClassification`` (prefix ``convnext.`` / ``convnextv2.``, head
``classifier.*``) and ``...Backbone`` (per-stage ``hidden_states_norms.stageK``,
kept as the output norms ``norm{K-1}``)::

    embeddings.patch_embeddings / embeddings.layernorm   -> downsample_layers.0.{0,1}
    encoder.stages.N.downsampling_layer.{0,1}            -> downsample_layers.N.{0,1}
    encoder.stages.N.layers.M.{dwconv, layernorm, pwconv1, pwconv2}
                                                         -> stages.N.M.{dwconv, norm, ...}
    ...layers.M.layer_scale_parameter, grn.weight/bias   -> stages.N.M.gamma, grn.gamma/beta

The final (pooled) ``layernorm.*`` and ``classifier.*`` are dropped.

``huggingface-dinov3``: ``DINOv3ConvNextModel``/``Backbone`` (prefix ``model.``):
``stages.N.downsample_layers.{0,1}``, ``stages.N.layers.M.{depthwise_conv,
layer_norm, pointwise_conv1, pointwise_conv2, gamma}``; the final ``layer_norm.*``
is dropped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from .common import StateDict, apply_rules, compile_rules, convert_keys, has_key, strip_prefix

_CONVNEXT_PREFIXES = ('convnext.', 'convnextv2.')
_CONVNEXT_RULES = compile_rules(
    (r'^embeddings\.patch_embeddings\.', 'downsample_layers.0.0.'),
    (r'^embeddings\.layernorm\.', 'downsample_layers.0.1.'),
    (r'^encoder\.stages\.(\d+)\.downsampling_layer\.(\d)\.', r'downsample_layers.\1.\2.'),
    (r'^encoder\.stages\.(\d+)\.layers\.(\d+)\.layernorm\.', r'stages.\1.\2.norm.'),
    (r'^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer_scale_parameter$', r'stages.\1.\2.gamma'),
    (r'^encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.weight$', r'stages.\1.\2.grn.gamma'),
    (r'^encoder\.stages\.(\d+)\.layers\.(\d+)\.grn\.bias$', r'stages.\1.\2.grn.beta'),
    (r'^encoder\.stages\.(\d+)\.layers\.(\d+)\.', r'stages.\1.\2.'),
    (r'^hidden_states_norms\.stage1\.', 'norm0.'),
    (r'^hidden_states_norms\.stage2\.', 'norm1.'),
    (r'^hidden_states_norms\.stage3\.', 'norm2.'),
    (r'^hidden_states_norms\.stage4\.', 'norm3.'),
)
_DINOV3_RULES = compile_rules(
    (r'^stages\.(\d+)\.downsample_layers\.(\d)\.', r'downsample_layers.\1.\2.'),
    (r'^stages\.(\d+)\.layers\.(\d+)\.depthwise_conv\.', r'stages.\1.\2.dwconv.'),
    (r'^stages\.(\d+)\.layers\.(\d+)\.layer_norm\.', r'stages.\1.\2.norm.'),
    (r'^stages\.(\d+)\.layers\.(\d+)\.pointwise_conv(\d)\.', r'stages.\1.\2.pwconv\3.'),
    (r'^stages\.(\d+)\.layers\.(\d+)\.gamma$', r'stages.\1.\2.gamma'),
)

#: config.json ``model_type`` values this package reads, and the layout of their weights.
MODEL_TYPES = {'convnext': 'huggingface', 'convnextv2': 'huggingface',
               'dinov3_convnext': 'huggingface-dinov3', 'upernet': 'huggingface-upernet'}
#: Weight files of a saved model directory, in the order transformers prefers them.
_WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')


def huggingface_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """transformers' ConvNeXt / ConvNeXt V2 layout to the official one."""
    return convert_keys(
        state_dict, 'Hugging Face ConvNeXt',
        lambda k: apply_rules(strip_prefix(k, _CONVNEXT_PREFIXES), _CONVNEXT_RULES),
        lambda k: strip_prefix(k, _CONVNEXT_PREFIXES).startswith(('layernorm.', 'classifier.')))


def huggingface_dinov3_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """transformers' DINOv3 ConvNeXt layout to the official one."""
    return convert_keys(
        state_dict, 'Hugging Face DINOv3 ConvNeXt',
        lambda k: apply_rules(strip_prefix(k, ('model.',)), _DINOV3_RULES),
        lambda k: k.startswith('layer_norm.'))


def is_huggingface(keys: list[str]) -> bool:
    return has_key(keys, r'^(convnext\.|convnextv2\.)?embeddings\.patch_embeddings\.') \
        and has_key(keys, r'^(convnext\.|convnextv2\.)?encoder\.stages\.\d+\.layers\.')


def is_huggingface_dinov3(keys: list[str]) -> bool:
    return has_key(keys, r'^(model\.)?stages\.0\.downsample_layers\.0\.') \
        and has_key(keys, r'^(model\.)?stages\.\d+\.layers\.\d+\.depthwise_conv\.')


def check_model_config(config: dict[str, Any], source: str) -> str:
    """Check a saved model's ``config.json``; return the layout of its weights.

    Refuses other architectures and ConvNeXt variants this backbone does not
    compute (another activation, patch size, stage count or LayerNorm epsilon). A
    ``UperNetForSemanticSegmentation`` (``upernet``) is checked by its ``backbone_config``.
    """
    model_type = config.get('model_type')
    if model_type == 'upernet':  # a whole UperNet: its backbone must be a ConvNeXt (V1/V2)
        backbone = config.get('backbone_config')
        if not isinstance(backbone, dict) or backbone.get('model_type') not in (
                'convnext', 'convnextv2'):
            what = backbone.get('model_type') if isinstance(backbone, dict) else backbone
            raise CheckpointError(f'{source}: a UperNet whose backbone_config is {what!r}, not '
                                  'a ConvNeXt; expected model_type convnext or convnextv2')
        check_model_config(backbone, f'{source} backbone_config')
        return MODEL_TYPES[model_type]
    if model_type not in MODEL_TYPES:
        architectures = ', '.join(config.get('architectures') or []) or 'not named'
        raise CheckpointError(
            f'{source}: model_type {model_type!r} (architectures: {architectures}) is not a '
            f'ConvNeXt; expected one of {", ".join(MODEL_TYPES)}')
    expected = dict(hidden_act='gelu', num_stages=4)
    if model_type == 'dinov3_convnext':
        expected['layer_norm_eps'] = 1e-6  # the blocks' LayerNorm; convnext(v2) fix it at 1e-6
    else:
        expected['patch_size'] = 4
    for name, value in expected.items():
        if name in config and config[name] != value:
            raise CheckpointError(
                f'{source}: {name}={config[name]!r}, but the ConvNeXt backbone computes '
                f'{name}={value!r}; these weights would give other features')
    return MODEL_TYPES[model_type]


def _weight_files(directory: Path, source: str) -> list[Path]:
    for name in _WEIGHT_FILES:
        index = directory / f'{name}.index.json'
        if index.is_file():  # sharded: the index maps every tensor to its shard
            try:
                weight_map = json.loads(index.read_text())['weight_map']
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f'{source}: {index.name} is not a shard index '
                                      f'({type(exc).__name__}: {exc})') from None
            shards = [directory / shard for shard in dict.fromkeys(weight_map.values())]
            missing = [shard.name for shard in shards if not shard.is_file()]
            if missing:
                raise CheckpointError(f'{source}: shards named in {index.name} are missing: '
                                      + ', '.join(missing))
            return shards
        if (directory / name).is_file():
            return [directory / name]
    raise CheckpointError(f'{source}: a model directory with config.json but no weights '
                          f'(looked for {", ".join(_WEIGHT_FILES)} and their .index.json)')


def read_model_directory(directory: Path, source: str, read_file: Any) -> dict[str, Any]:
    """The state dict of a ``save_pretrained`` directory (config.json + weights).

    ``read_file`` reads one weight file safely (see :func:`..io.read_checkpoint`).
    """
    config_file = directory / 'config.json'
    if not config_file.is_file():
        raise CheckpointError(f'{source}: a directory without config.json; pass a checkpoint '
                              'file, or a Hugging Face model directory (save_pretrained)')
    try:
        config = json.loads(config_file.read_text())
    except ValueError as exc:
        raise CheckpointError(f'{source}: config.json is not JSON ({exc})') from None
    if not isinstance(config, dict):
        raise CheckpointError(f'{source}: config.json holds {type(config).__name__}, '
                              'not a model config')
    check_model_config(config, f'{source}/config.json')
    state_dict: dict[str, Any] = {}
    for weights in _weight_files(directory, source):
        state_dict.update(read_file(weights))
    return state_dict
