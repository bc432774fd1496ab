"""Checkpoint layouts of ConvNeXt and their key mappings to this backbone's layout.

This backbone uses the paper's official names, so the official release maps
1:1. Each layout has a converter (``state_dict -> (converted, dropped)``, see
:mod:`.common`) and a detector that recognises it from the keys; :data:`LAYOUTS`
lists them in the order they are tried.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .common import Converter, StateDict
from .fcmae import fcmae_to_official, is_fcmae
from .foreign import describe_foreign
from .hf_upernet import hf_upernet_to_official, is_hf_upernet
from .huggingface import (
    huggingface_dinov3_to_official,
    huggingface_to_official,
    is_huggingface,
    is_huggingface_dinov3,
)
from .mmpretrain import is_classifier, is_mmpretrain, mmpretrain_to_official
from .official import (
    dense_to_official,
    dinov3_to_official,
    is_dense,
    is_dinov3,
    is_official,
    official_to_official,
)
from .timm import is_timm, timm_to_official


@dataclass(frozen=True)
class Layout:
    """One source layout: its name, where such files come from, how to read it."""

    name: str
    source: str
    detect: Callable[[list[str]], bool]
    convert: Converter


#: Every known layout, in detection order (more specific detectors first).
LAYOUTS = (
    Layout('timm', 'timm (.pth or .safetensors)', is_timm, timm_to_official),
    Layout('mmpretrain', 'mmpretrain classifiers; mmdet 3.x / mmseg 1.x ConvNeXt models',
           is_mmpretrain, mmpretrain_to_official),
    Layout('huggingface-upernet', 'Hugging Face UperNetForSemanticSegmentation with a ConvNeXt '
           '(V1/V2) backbone', is_hf_upernet, hf_upernet_to_official),
    Layout('huggingface', 'Hugging Face ConvNextModel/ConvNextV2Model, *ForImageClassification, '
           '*Backbone', is_huggingface, huggingface_to_official),
    Layout('huggingface-dinov3', 'Hugging Face DINOv3ConvNextModel/Backbone',
           is_huggingface_dinov3, huggingface_dinov3_to_official),
    Layout('fcmae', 'ConvNeXt V2 FCMAE pre-training (*_fcmae.pt, sparse encoder)',
           is_fcmae, fcmae_to_official),
    Layout('dinov3', 'DINOv3 ConvNeXt (dinov3_convnext_*.pth)', is_dinov3, dinov3_to_official),
    Layout('mmdet/mmseg', 'whole mmdet/mmseg models with this backbone (incl. the paper\'s '
           'mmdet 2.x / mmseg 0.x release)', is_dense, dense_to_official),
    Layout('official', 'the paper\'s release (ConvNeXt V1, V2 fine-tuned); this package\'s '
           'converted files', is_official, official_to_official),
)

#: Layout name -> converter.
CONVERTERS: dict[str, Converter] = {layout.name: layout.convert for layout in LAYOUTS}


def detect_format(state_dict: StateDict) -> str | None:
    """Name the layout of a flat ConvNeXt state dict from its keys; None if unknown."""
    keys = list(state_dict)
    return next((layout.name for layout in LAYOUTS if layout.detect(keys)), None)


__all__ = ['CONVERTERS', 'LAYOUTS', 'Layout', 'StateDict', 'describe_foreign', 'detect_format',
           'is_classifier']
