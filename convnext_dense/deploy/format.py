"""The export format, shared by the exporter (:mod:`.export`) and the runtime (:mod:`.runtime`):
file names, the graphs' input and output names, the model types that export and their task,
and the packages both need.
"""
from __future__ import annotations

import importlib
from typing import Any

from mmengine.config import Config

from .errors import ExportError

#: the files an export writes: the graph, and what a runtime needs around it
ONNX_FILE = 'end2end.onnx'
DEPLOY_FILE = 'deploy.json'
#: the graphs' outputs: mmdeploy's names and layouts for detectors; segmentors end in the
#: decode head's logits (mmseg's resizes and argmax depend on each image's size: done after)
OUTPUT_NAMES = {'segmentation': ['seg_logits'], 'detection': ['dets', 'labels', 'masks']}
#: a detector without a mask head (Faster R-CNN, Cascade R-CNN): mmdeploy's box-only outputs
BOX_OUTPUT_NAMES = ['dets', 'labels']
#: the graphs' inputs: the preprocessed batch; detectors also take each image's (height,
#: width) before padding (mmdet's ``img_shape``), to which mmdet clips their boxes
INPUT_NAMES = {'segmentation': ['input'], 'detection': ['input', 'img_shape']}
#: the model types that export, and their task
SUPPORTED_MODELS = {'EncoderDecoder': 'segmentation', 'MaskRCNN': 'detection',
                    'FasterRCNN': 'detection', 'CascadeRCNN': 'detection', 'DINO': 'detection',
                    'Mask2Former': 'detection'}
#: mmseg decode heads that classify masks, not pixels, and export (:mod:`.mask2former`): the
#: graph sums the queries' class and mask probabilities into the ``seg_logits`` map
EXPORTED_QUERY_DECODE_HEADS = ('Mask2FormerHead',)
#: the other mmseg decode heads that classify masks: not exported
QUERY_DECODE_HEADS = ('MaskFormerHead',)


def require_onnx() -> tuple[Any, Any]:
    """Import ``onnx`` and ``onnxruntime`` or say which extra installs them."""
    modules, missing = [], []
    for name in ('onnx', 'onnxruntime'):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(f'{" and ".join(missing)} not installed: the deploy tools need them; '
                          "install the extra: pip install 'convnext_dense[deploy]' "
                          '(onnx, onnxruntime)')
    return modules[0], modules[1]


def _type_name(module_cfg: Any) -> str:
    """A module config's type without its scope (``'mmdet.X'`` is ``'X'``)."""
    return str(module_cfg.get('type', '')).split('.')[-1] if module_cfg else ''


def task_of(cfg: Config) -> str:
    """``'detection'`` or ``'segmentation'`` for the supported model types.

    Raises:
        ExportError: naming the supported model types for any other model type, and the
            query-based decode heads (Mask2Former, MaskFormer) for segmentors with one.
    """
    source = cfg.filename or 'config'
    model_type = _type_name(cfg.model)
    if model_type not in SUPPORTED_MODELS:
        raise ExportError(f'{source}: cannot export a '
                          f'{model_type or "model without a type"}: supported model types are '
                          f'{", ".join(SUPPORTED_MODELS)}')
    head_type = _type_name(cfg.model.get('decode_head'))
    if head_type in QUERY_DECODE_HEADS:
        raise ExportError(f'{source}: cannot export a {model_type} with a {head_type}: '
                          'supported segmentors have a per-pixel decode head (UPerHead, '
                          'DepthwiseSeparableASPPHead, FCNHead, ...) or '
                          f'{", ".join(EXPORTED_QUERY_DECODE_HEADS)}; other query-based heads '
                          f'({", ".join(QUERY_DECODE_HEADS)}) are not exported')
    return SUPPORTED_MODELS[model_type]
