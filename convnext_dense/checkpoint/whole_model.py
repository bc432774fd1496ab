"""Convert whole detector/segmentor checkpoints: rename the backbone, keep neck and heads.

A trained Mask R-CNN, Cascade Mask R-CNN or UperNet checkpoint becomes one that
``load_from=``, ``tools/test.py CONFIG DST`` and ``tools/infer.py CONFIG DST`` read with
this project's configs. Only keys under ``backbone.`` change:

* mmdet 3.x / mmseg 1.x ConvNeXt configs (backbone ``mmpretrain.ConvNeXt``, layout
  ``mmpretrain``): ``stages.N.M.depthwise_conv`` -> ``dwconv``, ``pointwise_convK`` ->
  ``pwconvK``; the downsampling layers and output norms ``norm{i}`` keep their names;
* the paper's mmdet 2.x / mmseg 0.x release and this project's own checkpoints (layout
  ``mmdet/mmseg``): the official names already; passed through, checked;
* Hugging Face transformers' ``UperNetForSemanticSegmentation`` (layout
  ``huggingface-upernet``, :mod:`.layouts.hf_upernet`): the backbone as transformers'
  ConvNeXt layout, and the heads' ``batch_norm`` -> ``bn``, ``classifier`` -> ``conv_seg``
  (the one layout whose heads are renamed); a ``save_pretrained`` directory's class names
  (``id2label``) become ``meta['dataset_meta']['classes']`` (with a fixed palette), its
  ``config.json`` is kept as ``meta['hf_config']``.

Neck and head keys are kept as they are: Mask R-CNN, Cascade Mask R-CNN (``ConvFCBBoxHead``
with shared convs) and UperNet + FCN auxiliary head use the same parameter names in mmdet 2.x
and 3.x and in mmseg 0.x and 1.x (mmdet 3.x's and mmseg 1.x's own ConvNeXt model zoos serve
the weights trained with mmdet 2.x / mmseg 0.x for their 3.x / 1.x configs unchanged).
The checkpoint's ``meta`` (``dataset_meta``, mmdet 2.x's ``CLASSES`` ...) is kept and the
conversion recorded under ``meta['convnext_dense']``; training state (optimizer, message hub,
schedulers) is left out. Given a built model (:func:`check_against_model`; the model of a
config: :mod:`convnext_dense.apis.whole_checkpoints`), every key and shape is compared with
it, and a misfit is refused with what differs in words (number of classes, head type,
backbone arch) and the first mismatching keys. No key is ever dropped silently.
"""
from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .convert import (
    EMA_WEIGHT_KEYS,
    MAIN_WEIGHT_KEYS,
    ArchInfo,
    check_destination,
    convert_checkpoint,
    summarise_keys,
    unwrap,
)
from .errors import CheckpointError
from .hf_upernet import check_hf_upernet_fits, hf_dataset_meta, read_hf_config
from .io import read_checkpoint, write_checkpoint_atomically
from .layouts import describe_foreign, detect_format
from .layouts.common import StateDict
from .layouts.hf_upernet import LAYOUT as HF_UPERNET
from .layouts.hf_upernet import complete_batch_norms, hf_head_key_to_dense
from .model_fit import describe_misfit, describe_model
from .safe_loading import mmengine_safe_globals

if TYPE_CHECKING:
    from torch import nn

#: Layouts of whole models this module converts, and where such checkpoints come from.
WHOLE_LAYOUTS = {
    'mmpretrain': 'mmdet 3.x / mmseg 1.x ConvNeXt configs, backbone mmpretrain.ConvNeXt',
    'mmdet/mmseg': "official backbone names: the paper's mmdet 2.x / mmseg 0.x release, "
                   "this project's checkpoints",
    HF_UPERNET: 'Hugging Face transformers UperNetForSemanticSegmentation (ConvNeXt V1/V2 '
                'backbone): a save_pretrained directory or its model.safetensors',
}
#: Layouts whose head keys are renamed too: layout -> the renaming of one head key.
_HEAD_RENAMES = {HF_UPERNET: hf_head_key_to_dense}
#: Checkpoint entries carried over besides the weights.
_META_KEY = 'meta'
_BACKBONE = 'backbone.'
_MAX_PATTERNS = 6


@dataclass
class WholeConversion:
    """A whole detector/segmentor checkpoint with its backbone in this project's layout."""

    source: str
    src_format: str
    arch: ArchInfo
    state_dict: StateDict
    renamed: dict[str, str]
    kept: list[str]
    meta: dict[str, Any] = field(default_factory=dict)
    left_out: list[str] = field(default_factory=list)
    config: str | None = None
    heads_renamed: dict[str, str] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        """What the checkpoint holds, in words (``Mask R-CNN (one box head ...)``)."""
        return describe_model(self.state_dict)

    def report(self) -> str:
        """A short human-readable summary: what was renamed, kept, left out and checked."""
        backbone = sum(k.startswith(_BACKBONE) for k in self.state_dict)
        renames = Counter(_rename_pattern(old, new) for old, new in self.renamed.items())
        if len(renames) > _MAX_PATTERNS:  # restructured names: the modules that map
            renames = Counter(f'{old.split(".")[1]} -> {new.split(".")[1]}'
                              for old, new in self.renamed.items())
        lines = [f'source:    {self.source}',
                 f'format:    {self.src_format} ({WHOLE_LAYOUTS[self.src_format]})',
                 f'model:     {self.model}',
                 f'arch:      {self.arch}',
                 f'backbone:  {backbone} tensors, ' + (
                     f'{len(self.renamed)} renamed: ' + ', '.join(
                         f'{pattern} ({count})' for pattern, count in renames.items())
                     if self.renamed else "none renamed (already this project's layout)"),
                 *([f'heads:     {len(self.heads_renamed)} tensors renamed: ' + ', '.join(
                     f'{pattern} ({count})' for pattern, count in Counter(
                         _rename_pattern(old, new)
                         for old, new in self.heads_renamed.items()).items())]
                   if self.heads_renamed else []),
                 *([f'added:     {len(self.added)} BatchNorm step counters the source lacks '
                    '(num_batches_tracked = 0; they change no output)'] if self.added else []),
                 f'kept:      {len(self.kept)} tensors as they are: {summarise_keys(self.kept)}',
                 f'meta:      {", ".join(sorted(self.meta)) or "none"} kept; the conversion '
                 "recorded under meta['convnext_dense']"]
        training = [k for k in self.left_out if k not in EMA_WEIGHT_KEYS]
        ema = [k for k in self.left_out if k in EMA_WEIGHT_KEYS]
        left_out = ([f'{", ".join(training)} (training state)'] if training else []) + (
            [f'{", ".join(ema)} (EMA weights; the main weights are converted)'] if ema else [])
        if left_out:
            lines.append(f'left out:  {"; ".join(left_out)}')
        lines.append(f'checked:   every key and shape fits {self.config}' if self.config else
                     'checked:   backbone only (pass --config CONFIG to compare every key and '
                     'shape with the model it builds)')
        return '\n'.join(lines)

    def to_checkpoint(self) -> dict[str, Any]:
        """An mmengine checkpoint: ``state_dict`` and the source's ``meta`` plus this record."""
        record = dict(whole=True, source=self.source, src_format=self.src_format,
                      arch=self.arch.name, renamed=len(self.renamed), config=self.config,
                      **{k: list(v) if isinstance(v, tuple) else v
                         for k, v in asdict(self.arch).items()})
        return dict(state_dict=self.state_dict, meta={**self.meta, 'convnext_dense': record})


def _rename_pattern(old: str, new: str) -> str:
    """The components that differ: ``depthwise_conv -> dwconv``."""
    changed = [(a, b) for a, b in zip(old.split('.'), new.split('.')) if a != b]
    return ', '.join(f'{a} -> {b}' for a, b in changed) or 'reshaped'


def _refuse_non_whole(state_dict: StateDict, src_format: str | None, source: str) -> None:
    """Refuse backbone and classifier checkpoints and models of other families."""
    if src_format is None:
        foreign = describe_foreign(list(state_dict))
        raise CheckpointError(f'{source}: ' + (foreign or (
            'not a ConvNeXt detector/segmentor in a known layout '
            f'({", ".join(WHOLE_LAYOUTS)}); first keys: '
            f'{", ".join(list(state_dict)[:3]) or "none"}')))
    hint = ('--whole converts whole detectors/segmentors; convert backbone weights without '
            '--whole (tools/convert_checkpoint.py SRC DST) and load them with the backbone\'s '
            'init_cfg')
    parts = {k.split('.')[0] for k in state_dict if not k.startswith(_BACKBONE)}
    if parts == {'head'}:
        raise CheckpointError(f'{source}: an ImageNet classifier (backbone and head only, '
                              f'{src_format} layout), not a detector/segmentor; {hint}')
    if not parts or not any(k.startswith(_BACKBONE) for k in state_dict):
        raise CheckpointError(f'{source}: backbone weights without neck or heads '
                              f'({src_format} layout), not a detector/segmentor; {hint}')
    if src_format not in WHOLE_LAYOUTS:
        raise CheckpointError(f'src_format for a whole model must be one of '
                              f'{", ".join(WHOLE_LAYOUTS)}, got {src_format!r}')


def convert_whole_checkpoint(checkpoint: dict[str, Any], source: str = '<in memory>',
                             src_format: str | None = None,
                             arch: str | None = None) -> WholeConversion:
    """Rename the backbone of a loaded whole-model checkpoint; keep everything else.

    Args:
        checkpoint: What ``torch.load`` returned (``state_dict`` and ``meta``, or a bare
            state dict).
        source: Name used in messages and the report.
        src_format: ``'mmpretrain'`` or ``'mmdet/mmseg'`` (see :data:`WHOLE_LAYOUTS`);
            detected from the keys when None.
        arch: Expected backbone arch; detected from the shapes when None.

    Raises:
        CheckpointError: not a whole ConvNeXt detector/segmentor (a backbone or classifier
            checkpoint, another model family), or a backbone key fits no ConvNeXt key.
    """
    state_dict, _ = unwrap(checkpoint, ema=False, source=source)
    detected = detect_format(state_dict) if src_format is None else src_format
    _refuse_non_whole(state_dict, detected, source)
    backbone = convert_checkpoint({'state_dict': state_dict}, source, detected, arch)
    old_keys = [k for k in state_dict if k.startswith(_BACKBONE)]
    new_keys = [_BACKBONE + k for k in backbone.state_dict]
    if len(old_keys) != len(new_keys):  # the layout left out a backbone tensor
        raise CheckpointError(f'{source}: backbone tensors without a place in this backbone: '
                              + summarise_keys(sorted(set(backbone.dropped) & set(old_keys))))
    heads = [k for k in state_dict if not k.startswith(_BACKBONE)]
    rename_head = _HEAD_RENAMES.get(detected, lambda key: key)
    heads_renamed = {k: new for k in heads if (new := rename_head(k)) != k}
    kept = [k for k in heads if k not in heads_renamed]
    converted = dict(zip(new_keys, backbone.state_dict.values()))
    converted.update((heads_renamed.get(k, k), state_dict[k]) for k in heads)
    added = complete_batch_norms(converted) if detected in _HEAD_RENAMES else []
    weights_entry = next((k for k in MAIN_WEIGHT_KEYS if isinstance(checkpoint.get(k), dict)),
                         None)
    # a bare state dict has no meta and no training state
    left_out = [k for k in checkpoint if weights_entry and k not in (weights_entry, _META_KEY)]
    meta = checkpoint.get(_META_KEY) if weights_entry else None
    return WholeConversion(
        source, detected, backbone.arch, converted,
        renamed={old: new for old, new in zip(old_keys, new_keys) if old != new},
        kept=kept, meta=dict(meta) if isinstance(meta, dict) else {}, left_out=left_out,
        heads_renamed=heads_renamed, added=added)


def read_whole_checkpoint(src: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely; mmengine's training state (message hub) is allowed.

    A transformers UperNet directory gives its weights with a ``meta``: the class names
    (``dataset_meta``) and its ``config.json`` (``hf_config``).
    """
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        checkpoint = read_checkpoint(src)
    hf_config = read_hf_config(src) if os.path.isdir(src) else None
    if hf_config is None:
        return checkpoint
    return {'state_dict': checkpoint, _META_KEY: {
        'dataset_meta': hf_dataset_meta(hf_config), 'hf_config': hf_config}}


# --- fitting a built model ---------------------------------------------------------------


def check_against_model(conversion: WholeConversion, model: nn.Module, name: str) -> None:
    """Refuse unless every key and shape fits ``model`` (``name``: where it comes from, a
    config file, for the messages and the report).

    Raises:
        CheckpointError: names what differs in words (number of classes, head type,
            backbone arch) and the first mismatching keys.
    """
    if conversion.src_format == HF_UPERNET:  # the settings the weights do not show too
        check_hf_upernet_fits(conversion.state_dict, conversion.meta, model,
                              conversion.source, name)
    problem = describe_misfit(conversion.state_dict, model, conversion.source, name)
    if problem:
        raise CheckpointError(problem)
    conversion.config = name


#: Called on a conversion before it is returned or written; raises ``CheckpointError`` to
#: refuse it (e.g. a config's model that the weights do not fit).
ConversionCheck = Callable[[WholeConversion], None]


def convert_whole_file(src: str | os.PathLike, check: ConversionCheck | None = None,
                       src_format: str | None = None, arch: str | None = None) -> WholeConversion:
    """Read ``src`` and convert it; ``check`` (if given) may refuse the result."""
    conversion = convert_whole_checkpoint(read_whole_checkpoint(src), str(src), src_format, arch)
    if check is not None:
        check(conversion)
    return conversion


def convert_whole_and_save(src: str | os.PathLike, dst: str | os.PathLike,
                           check: ConversionCheck | None = None, force: bool = False,
                           **kwargs: Any) -> WholeConversion:
    """Convert ``src`` (see :func:`convert_whole_file`) and write it atomically to ``dst``.

    ``src`` is never modified; an existing ``dst`` is kept unless ``force``; a refused
    conversion writes nothing.
    """
    check_destination(src, dst, force)
    conversion = convert_whole_file(src, check, **kwargs)
    write_checkpoint_atomically(conversion.to_checkpoint(), dst, force=force)
    return conversion
