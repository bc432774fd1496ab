"""Hugging Face transformers' ``UperNetForSemanticSegmentation`` with a ConvNeXt backbone.

Whole UperNets, both ways between transformers' names and this project's (mmseg's
``EncoderDecoder`` with ``UPerHead`` and ``FCNHead``)::

    backbone.*  (ConvNextBackbone / ConvNextV2Backbone)   <-> backbone.*  (see .huggingface:
        embeddings.*, encoder.stages.N.*, hidden_states_norms.stageK -> norm{K-1})
    decode_head.{psp_modules.I.1, bottleneck, lateral_convs.I, fpn_convs.I, fpn_bottleneck}
        .conv.weight / .batch_norm.*                      <-> the same .conv.weight / .bn.*
    decode_head.classifier.*                              <-> decode_head.conv_seg.*
    auxiliary_head.{convs.I, conv_cat}.conv.weight / .batch_norm.*
                                                          <-> the same .conv.weight / .bn.*
    auxiliary_head.classifier.*                           <-> auxiliary_head.conv_seg.*

Nothing is dropped in either direction; a key outside these patterns is refused by name.
As a backbone layout (``tools/convert_checkpoint.py`` without ``--whole``), the backbone is
taken and the heads are dropped.
"""
from __future__ import annotations

import re

import torch

from ..errors import CheckpointError
from .common import StateDict, apply_rules, compile_rules, has_key
from .huggingface import huggingface_to_official

LAYOUT = 'huggingface-upernet'
_BACKBONE = 'backbone.'
_BN = r'(weight|bias|running_mean|running_var|num_batches_tracked)'
_CONV_MODULES = (r'(decode_head\.(psp_modules\.\d+\.1|bottleneck|lateral_convs\.\d+|fpn_convs\.\d+'
                 r'|fpn_bottleneck)|auxiliary_head\.(convs\.\d+|conv_cat))')
#: Head keys of each side (group 1 is the conv module's name).
_HF_HEAD_KEY = re.compile(rf'^(?:{_CONV_MODULES}\.(conv\.weight|batch_norm\.{_BN})'
                          r'|(decode_head|auxiliary_head)\.classifier\.(weight|bias))$')
_DENSE_HEAD_KEY = re.compile(rf'^(?:{_CONV_MODULES}\.(conv\.weight|bn\.{_BN})'
                             r'|(decode_head|auxiliary_head)\.conv_seg\.(weight|bias))$')
_HEAD_TO_DENSE = compile_rules((r'\.batch_norm\.', '.bn.'), (r'\.classifier\.', '.conv_seg.'))
_HEAD_TO_HF = compile_rules((r'\.bn\.', '.batch_norm.'), (r'\.conv_seg\.', '.classifier.'))
_BACKBONE_TO_HF = compile_rules(
    (r'^downsample_layers\.0\.0\.', 'embeddings.patch_embeddings.'),
    (r'^downsample_layers\.0\.1\.', 'embeddings.layernorm.'),
    (r'^downsample_layers\.(\d+)\.(\d)\.', r'encoder.stages.\1.downsampling_layer.\2.'),
    (r'^stages\.(\d+)\.(\d+)\.norm\.', r'encoder.stages.\1.layers.\2.layernorm.'),
    (r'^stages\.(\d+)\.(\d+)\.gamma$', r'encoder.stages.\1.layers.\2.layer_scale_parameter'),
    (r'^stages\.(\d+)\.(\d+)\.grn\.gamma$', r'encoder.stages.\1.layers.\2.grn.weight'),
    (r'^stages\.(\d+)\.(\d+)\.grn\.beta$', r'encoder.stages.\1.layers.\2.grn.bias'),
    (r'^stages\.(\d+)\.(\d+)\.(dwconv|pwconv1|pwconv2)\.', r'encoder.stages.\1.layers.\2.\3.'),
    *((rf'^norm{i}\.', f'hidden_states_norms.stage{i + 1}.') for i in range(4)),
)


def is_hf_upernet(keys: list[str]) -> bool:
    """A transformers UperNet: its backbone's embeddings and its head's ``batch_norm``."""
    return has_key(keys, r'^backbone\.embeddings\.patch_embeddings\.') \
        and has_key(keys, r'^decode_head\..*\.batch_norm\.')


def hf_upernet_to_official(state_dict: StateDict) -> tuple[StateDict, list[str]]:
    """The backbone of a transformers UperNet in the official layout; the heads dropped."""
    backbone = {k[len(_BACKBONE):]: v for k, v in state_dict.items() if k.startswith(_BACKBONE)}
    heads = [k for k in state_dict if not k.startswith(_BACKBONE)]
    unknown = [k for k in heads if not _HF_HEAD_KEY.match(k)]
    if unknown:
        raise CheckpointError(f'Hugging Face UperNet key {unknown[0]!r} is neither the '
                              'backbone nor a UperNet/FCN head tensor')
    converted, dropped = huggingface_to_official(backbone)
    if dropped:  # a UperNet's backbone has no pooled layernorm or classifier
        raise CheckpointError('Hugging Face UperNet backbone tensors without a place in the '
                              f'ConvNeXt backbone: {", ".join(_BACKBONE + k for k in dropped)}')
    return converted, heads


def hf_head_key_to_dense(key: str) -> str:
    """A transformers UperNet head key in this project's (mmseg's) names."""
    if not _HF_HEAD_KEY.match(key):
        raise CheckpointError(f'Hugging Face UperNet key {key!r} is not a UperNet/FCN head '
                              'tensor (expected decode_head.* or auxiliary_head.* conv, '
                              'batch_norm or classifier)')
    return apply_rules(key, _HEAD_TO_DENSE, unmatched=key)


def complete_batch_norms(state_dict: StateDict) -> list[str]:
    """Add ``num_batches_tracked`` (0) to the ``bn`` layers that lack it; return the keys.

    transformers loads a BatchNorm without its step counter; mmengine's strict loading does
    not. The counter only counts training steps (the layers' momentum is set): it changes
    no output.
    """
    added = []
    for key in [k for k in state_dict if k.endswith('.bn.running_mean')]:
        counter = key[:-len('running_mean')] + 'num_batches_tracked'
        if counter not in state_dict:
            state_dict[counter] = torch.tensor(0, dtype=torch.long)
            added.append(counter)
    return added


def dense_to_hf_upernet(state_dict: StateDict) -> StateDict:
    """This project's whole UperNet (backbone ``ConvNeXt``, ``UPerHead``, ``FCNHead``) in
    transformers' ``UperNetForSemanticSegmentation`` names; every key is mapped."""
    converted: StateDict = {}
    for key, value in state_dict.items():
        if key.startswith(_BACKBONE):
            new_key = apply_rules(key[len(_BACKBONE):], _BACKBONE_TO_HF)
            if new_key is None:
                raise CheckpointError(f'key {key!r} has no counterpart in transformers\' '
                                      'ConvNextBackbone')
            converted[_BACKBONE + new_key] = value
        elif _DENSE_HEAD_KEY.match(key):
            converted[apply_rules(key, _HEAD_TO_HF, unmatched=key)] = value
        else:
            raise CheckpointError(f'key {key!r} has no counterpart in transformers\' '
                                  'UperNetForSemanticSegmentation (backbone.*, UperNet '
                                  'decode_head.*, FCN auxiliary_head.*)')
    return converted


__all__ = ['LAYOUT', 'complete_batch_norms', 'dense_to_hf_upernet', 'hf_head_key_to_dense',
           'hf_upernet_to_official', 'is_hf_upernet']
