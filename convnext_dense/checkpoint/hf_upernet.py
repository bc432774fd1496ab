"""What a transformers ``UperNetForSemanticSegmentation`` computes, in this project's terms.

:class:`UperNetSettings` describes a whole UperNet with a ConvNeXt backbone by the numbers
that both sides share: backbone arch (V1 / V2, layer scale), labels, decode-head channels
(``hidden_size``), pool scales and the auxiliary FCN head. It is read from transformers'
``config.json`` (:func:`settings_of_hf_config`), from the weights alone
(:func:`settings_of_state_dict`: everything but the pool scales' values) and from a built
mmseg model (:func:`settings_of_model`), which refuses by name what transformers' classes
do not compute. :func:`hf_config` writes the ``config.json`` of a model;
:func:`describe_differences` names every setting in which two descriptions differ.

transformers' UperNet fixes what mmseg's configs may change, so a built model must have:
this project's ``ConvNeXt`` (all four stages out, output stride 32; a V2 backbone without
layer scale), no neck, ``UPerHead`` on inputs 0-3, an ``FCNHead`` (kernel 3, dilation 1,
on input 2) or none, ``align_corners=False``, every head conv followed by a BatchNorm
(eps 1e-5, affine, running statistics) and a ReLU, conv biases off, and one output channel
per class.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..arch import NUM_STAGES
from .convert import ArchInfo
from .errors import CheckpointError
from .layouts.common import StateDict

_STAGES = [f'stage{i + 1}' for i in range(NUM_STAGES)]
_BN_EPS = 1e-5  # torch's BatchNorm2d default, which transformers' UperNet layers keep
_AUX_IN_INDEX = 2  # transformers' UperNetFCNHead reads the third stage


@dataclass(frozen=True)
class AuxiliarySettings:
    """The auxiliary FCN head."""

    in_channels: int
    channels: int
    num_convs: int
    concat_input: bool


@dataclass(frozen=True)
class UperNetSettings:
    """A whole UperNet with a ConvNeXt backbone, by what its weights and computation need.

    ``pool_scales`` is None where only their number is known (a weights file alone).
    """

    arch: ArchInfo
    num_labels: int
    hidden_size: int
    num_pool_scales: int
    auxiliary: AuxiliarySettings | None
    pool_scales: tuple[int, ...] | None = None
    in_channels: int = 3


def _refuse(source: str, what: str) -> CheckpointError:
    return CheckpointError(f'{source}: {what}; transformers\' UperNetForSemanticSegmentation '
                           'cannot express it')


# --- transformers' config.json -------------------------------------------------------------


def settings_of_hf_config(config: dict[str, Any], source: str) -> UperNetSettings:
    """Read a transformers UperNet ``config.json``; refuse what this project cannot build."""
    backbone = config.get('backbone_config') or {}
    model_type = backbone.get('model_type')
    if config.get('model_type') != 'upernet' or model_type not in ('convnext', 'convnextv2'):
        raise CheckpointError(f'{source}: model_type {config.get("model_type")!r} with backbone '
                              f'{model_type!r}; expected a UperNet (model_type upernet) with a '
                              'convnext or convnextv2 backbone_config')
    out_features = backbone.get('out_features') or [  # older configs name indices only
        f'stage{i}' for i in backbone.get('out_indices') or [NUM_STAGES]]
    if list(out_features) != _STAGES:
        raise CheckpointError(f'{source}: backbone_config.out_features={list(out_features)}; '
                              f'this project\'s UperNet reads all four stages ({_STAGES})')
    dims = tuple(backbone['hidden_sizes'])
    v2 = model_type == 'convnextv2'
    arch = ArchInfo(tuple(backbone['depths']), dims, use_grn=v2,
                    layer_scale=not v2 and backbone.get('layer_scale_init_value', 1e-6) > 0)
    auxiliary = None
    if config.get('use_auxiliary_head', True):
        auxiliary = AuxiliarySettings(
            config.get('auxiliary_in_channels') or dims[_AUX_IN_INDEX],
            config.get('auxiliary_channels', 256), config.get('auxiliary_num_convs', 1),
            bool(config.get('auxiliary_concat_input', False)))
    pool_scales = tuple(config.get('pool_scales', (1, 2, 3, 6)))
    return UperNetSettings(arch, len(config.get('id2label') or {}) or config.get('num_labels', 2),
                           config.get('hidden_size', 512), len(pool_scales), auxiliary,
                           pool_scales, backbone.get('num_channels', 3))


def read_hf_config(directory: str | Path) -> dict[str, Any] | None:
    """The ``config.json`` of a transformers UperNet directory; None for anything else."""
    config_file = Path(directory) / 'config.json'
    if not config_file.is_file():
        return None
    try:
        config = json.loads(config_file.read_text())
    except ValueError:
        return None  # the reader of the weights names a broken config.json
    return config if isinstance(config, dict) and config.get('model_type') == 'upernet' else None


def hf_labels(config: dict[str, Any]) -> list[str]:
    """Class names from a transformers config's ``id2label``, in label order."""
    id2label = config.get('id2label') or {}
    return [id2label[k] for k in sorted(id2label, key=int)]


def hf_dataset_meta(config: dict[str, Any]) -> dict[str, list]:
    """``dataset_meta`` for a transformers config: its class names and, as mmseg's inference
    API also reads one, a fixed palette (random colours, seed 42: transformers has none)."""
    classes = hf_labels(config)
    palette = torch.randint(0, 256, (len(classes), 3),
                            generator=torch.Generator().manual_seed(42)).tolist()
    return dict(classes=classes, palette=palette)


def hf_config(settings: UperNetSettings, labels: list[str], auxiliary_loss_weight: float = 0.4,
              loss_ignore_index: int = 255) -> dict[str, Any]:
    """``config.json`` of a ``UperNetForSemanticSegmentation`` with these settings."""
    arch = settings.arch
    v2 = arch.use_grn
    if v2 and arch.layer_scale:
        raise CheckpointError('a ConvNeXt V2 (GRN) backbone with layer scale: transformers\' '
                              'ConvNextV2 has no layer scale')
    if settings.pool_scales is None:
        raise CheckpointError('the pool scales are not known (weights give only their number)')
    backbone = dict(
        model_type='convnextv2' if v2 else 'convnext', depths=list(arch.depths),
        hidden_sizes=list(arch.dims), num_channels=settings.in_channels, num_stages=NUM_STAGES,
        patch_size=4, hidden_act='gelu', drop_path_rate=0.0, out_features=list(_STAGES),
        out_indices=list(range(1, NUM_STAGES + 1)), stage_names=['stem', *_STAGES])
    if not v2:
        backbone['layer_scale_init_value'] = 1e-6 if arch.layer_scale else 0.0
    auxiliary = settings.auxiliary
    config = dict(
        architectures=['UperNetForSemanticSegmentation'], model_type='upernet',
        backbone_config=backbone, hidden_size=settings.hidden_size,
        pool_scales=list(settings.pool_scales or ()), use_auxiliary_head=auxiliary is not None,
        auxiliary_loss_weight=auxiliary_loss_weight, loss_ignore_index=loss_ignore_index,
        id2label={str(i): name for i, name in enumerate(labels)},
        label2id={name: i for i, name in enumerate(labels)})
    if auxiliary is not None:
        config.update(auxiliary_in_channels=auxiliary.in_channels,
                      auxiliary_channels=auxiliary.channels,
                      auxiliary_num_convs=auxiliary.num_convs,
                      auxiliary_concat_input=auxiliary.concat_input)
    return config


# --- weights ------------------------------------------------------------------------------


def settings_of_state_dict(state_dict: StateDict, source: str) -> UperNetSettings:
    """A UperNet's settings from the shapes of its weights (this project's names)."""
    backbone = {k[len('backbone.'):]: v for k, v in state_dict.items()
                if k.startswith('backbone.')}
    arch = ArchInfo.of_state_dict(backbone, source)
    classifier = state_dict.get('decode_head.conv_seg.weight')
    if classifier is None:
        raise CheckpointError(f'{source}: no decode_head.conv_seg.weight: not a UperNet')
    pools = {k.split('.')[2] for k in state_dict if k.startswith('decode_head.psp_modules.')}
    auxiliary = None
    if 'auxiliary_head.conv_seg.weight' in state_dict:
        convs = {k.split('.')[2] for k in state_dict if k.startswith('auxiliary_head.convs.')}
        first = state_dict.get('auxiliary_head.convs.0.conv.weight')
        channels = state_dict['auxiliary_head.conv_seg.weight'].shape[1]
        auxiliary = AuxiliarySettings(
            first.shape[1] if first is not None else channels, channels, len(convs),
            'auxiliary_head.conv_cat.conv.weight' in state_dict)
    return UperNetSettings(arch, classifier.shape[0], classifier.shape[1], len(pools),
                           auxiliary, None, backbone['downsample_layers.0.0.weight'].shape[1])


# --- a built mmseg model ---------------------------------------------------------------


def _check_conv_modules(head: nn.Module, name: str, source: str) -> None:
    """Every ConvModule of ``head``: conv without bias, BatchNorm (eps 1e-5), ReLU."""
    for module_name, module in head.named_modules():
        if not all(hasattr(module, a) for a in ('conv', 'with_norm', 'with_activation')):
            continue
        where = f'{name}.{module_name}'
        norm = getattr(module, 'norm', None) if module.with_norm else None
        if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
            raise _refuse(source, f'{where} has norm {type(norm).__name__ if norm else None} '
                                  '(transformers\' UperNet: BatchNorm after every conv)')
        if norm.eps != _BN_EPS or not norm.affine or not norm.track_running_stats:
            raise _refuse(source, f'{where}: BatchNorm eps={norm.eps}, affine={norm.affine}, '
                                  f'track_running_stats={norm.track_running_stats} '
                                  f'(transformers: eps={_BN_EPS}, affine, running statistics)')
        act = getattr(module, 'activate', None) if module.with_activation else None
        if type(act) is not nn.ReLU:
            raise _refuse(source, f'{where} has activation {type(act).__name__ if act else None}'
                                  ' (transformers\' UperNet: ReLU)')
        if type(module.conv) is not nn.Conv2d or module.conv.bias is not None or \
                tuple(getattr(module, 'order', ('conv', 'norm', 'act'))) != ('conv', 'norm', 'act'):
            raise _refuse(source, f'{where}: a {type(module.conv).__name__} with bias '
                                  f'{module.conv.bias is not None} in order {module.order} '
                                  '(transformers: Conv2d without bias, then norm, then ReLU)')


def _check_head(head: nn.Module, name: str, in_index: Any, source: str) -> None:
    if head.align_corners:
        raise _refuse(source, f'{name}.align_corners=True (transformers\' UperNet resizes with '
                              'align_corners=False)')
    if head.in_index != in_index:
        raise _refuse(source, f'{name}.in_index={head.in_index} (transformers: {in_index})')
    if head.out_channels != head.num_classes:
        raise _refuse(source, f'{name} has {head.out_channels} output channel(s) for '
                              f'{head.num_classes} classes (a sigmoid binary head; transformers '
                              'scores every class)')
    _check_conv_modules(head, name, source)


def settings_of_model(model: nn.Module, source: str) -> UperNetSettings:
    """The settings of a built mmseg UperNet; refuse what transformers' UperNet does not
    compute, by name (``source``: the config, for the messages)."""
    kind = type(model).__name__
    decode = getattr(model, 'decode_head', None)
    if kind != 'EncoderDecoder' or decode is None:
        heads = ', '.join(type(getattr(model, n)).__name__ for n in ('roi_head', 'bbox_head',
                                                                     'panoptic_head')
                          if getattr(model, n, None) is not None)
        raise _refuse(source, f'a {kind}{f" ({heads})" if heads else ""}, not a UperNet '
                              'segmentor (EncoderDecoder with UPerHead)')
    if type(decode).__name__ != 'UPerHead':
        raise _refuse(source, f'decode head {type(decode).__name__}, not UPerHead '
                              '(transformers maps UperNet only)')
    if getattr(model, 'with_neck', False):
        raise _refuse(source, f'a neck ({type(model.neck).__name__})')
    backbone = model.backbone
    if not all(hasattr(backbone, a) for a in ('depths', 'dims', 'use_grn', 'output_stride')):
        raise _refuse(source, f'backbone {type(backbone).__name__}, not this project\'s ConvNeXt')
    if tuple(backbone.out_indices) != tuple(range(NUM_STAGES)):
        raise _refuse(source, f'backbone out_indices={tuple(backbone.out_indices)} '
                              '(transformers\' UperNet reads all four stages)')
    if backbone.output_stride != 32:
        raise _refuse(source, f'backbone output_stride={backbone.output_stride} (dilated '
                              'stages; transformers\' ConvNeXt has output stride 32)')
    arch = ArchInfo.of_model(backbone)
    if arch.use_grn and arch.layer_scale:
        raise _refuse(source, 'a ConvNeXt V2 (GRN) backbone with layer scale (transformers\' '
                              'ConvNextV2 has no layer scale)')
    _check_head(decode, 'decode_head', list(range(NUM_STAGES)), source)
    if decode.input_transform != 'multiple_select' or list(decode.in_channels) != \
            list(arch.dims):
        raise _refuse(source, f'decode_head in_channels={decode.in_channels}, input_transform='
                              f'{decode.input_transform} (transformers: the backbone\'s '
                              f'{list(arch.dims)}, multiple_select)')
    auxiliary = None
    aux = getattr(model, 'auxiliary_head', None)
    if aux is not None:
        if type(aux).__name__ != 'FCNHead':
            raise _refuse(source, f'auxiliary head {type(aux).__name__} (transformers: one '
                                  'FCNHead or none)')
        _check_head(aux, 'auxiliary_head', _AUX_IN_INDEX, source)
        conv = aux.convs[0].conv if aux.num_convs else None
        if aux.kernel_size != 3 or (conv is not None and conv.dilation != (1, 1)):
            raise _refuse(source, f'auxiliary_head kernel_size={aux.kernel_size}, dilation='
                                  f'{conv.dilation[0] if conv is not None else 1} '
                                  '(transformers: 3 and 1)')
        if aux.num_classes != decode.num_classes:
            raise _refuse(source, f'auxiliary_head has {aux.num_classes} classes, decode_head '
                                  f'{decode.num_classes} (transformers: one num_labels)')
        auxiliary = AuxiliarySettings(aux.in_channels, aux.channels, aux.num_convs,
                                      bool(aux.concat_input))
    if getattr(model, 'align_corners', False):
        raise _refuse(source, 'align_corners=True')
    pool_scales = tuple(decode.psp_modules.pool_scales)
    return UperNetSettings(arch, decode.num_classes, decode.channels, len(pool_scales),
                           auxiliary, pool_scales, backbone.in_channels)


# --- comparing ------------------------------------------------------------------------------


def describe_differences(checkpoint: UperNetSettings, config: UperNetSettings) -> list[str]:
    """Each setting in which a checkpoint's UperNet differs from a config's, in words."""
    words = []

    def differs(what: str, ours: Any, theirs: Any) -> None:
        if ours != theirs:
            words.append(f'{what}: the checkpoint has {ours}, the config {theirs}')

    differs('backbone arch', f'ConvNeXt {checkpoint.arch}', f'ConvNeXt {config.arch}')
    differs('input channels', checkpoint.in_channels, config.in_channels)
    differs('number of labels', checkpoint.num_labels, config.num_labels)
    differs('decode head channels', checkpoint.hidden_size, config.hidden_size)
    if checkpoint.pool_scales is not None and config.pool_scales is not None:
        differs('pool scales', checkpoint.pool_scales, config.pool_scales)
    else:
        differs('number of pool scales', checkpoint.num_pool_scales, config.num_pool_scales)
    ours, theirs = checkpoint.auxiliary, config.auxiliary
    if (ours is None) != (theirs is None):
        words.append('auxiliary head: the checkpoint has ' + (
            'one, the config none' if ours else 'none, the config an FCNHead'))
    elif ours is not None and theirs is not None:
        differs('auxiliary head channels', ours.channels, theirs.channels)
        differs('auxiliary head input channels', ours.in_channels, theirs.in_channels)
        differs('auxiliary head convs', ours.num_convs, theirs.num_convs)
        differs('auxiliary head concat_input', ours.concat_input, theirs.concat_input)
    return words


def check_model_fits(settings: UperNetSettings, model: nn.Module, source: str,
                     target: str) -> None:
    """Refuse unless ``model`` (built from ``target``) computes the UperNet ``settings``
    describe: its settings are read (refusing what transformers does not compute) and
    every difference is named."""
    differences = describe_differences(settings, settings_of_model(model, target))
    if differences:
        raise CheckpointError(f'{source} does not fit {target}: ' + '; '.join(differences))


def check_hf_upernet_fits(state_dict: StateDict, meta: dict[str, Any], model: nn.Module,
                          source: str, target: str) -> None:
    """Refuse a converted transformers UperNet that ``target``'s ``model`` would not compute
    as transformers does; the settings come from the source's ``config.json`` where the
    conversion kept it (``meta['hf_config']``), else from the weights' shapes."""
    hf = meta.get('hf_config')
    settings = settings_of_hf_config(hf, source) if isinstance(hf, dict) else \
        settings_of_state_dict(state_dict, source)
    check_model_fits(settings, model, source, target)


def to_hf_state_dict(state_dict: StateDict) -> StateDict:
    """Tensors as safetensors stores them: contiguous, each with its own memory."""
    return {k: v.detach().to('cpu').contiguous().clone() for k, v in state_dict.items()
            if isinstance(v, torch.Tensor)}
