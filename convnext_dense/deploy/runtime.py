"""Exported models run by ONNX Runtime (or OpenVINO: :mod:`.sessions`), tested and used like
the PyTorch models.

:class:`ONNXRuntimeDetector` and :class:`ONNXRuntimeSegmentor` are mmengine models: the
config's own data preprocessor prepares the batch, ONNX Runtime runs ``end2end.onnx``, and the
outputs become mmdet's/mmseg's data samples at the original image size (boxes, which the graph
clipped to each image's ``img_shape``, rescaled; masks pasted with mmdet's ``_do_paste_mask``;
logits resized, cropped and resized to the original size before the argmax by mmseg's own post-
processing), so mmengine's Runner evaluates them with the config's evaluator and the
visualizers draw them. Importing :mod:`convnext_dense.deploy` registers them in mmdet's/mmseg's
model registries.

:func:`use_onnx_runtime` (a test config) and :func:`load_onnx_model` (inference) are what the
tools hand to :mod:`convnext_dense.apis` for an ``.onnx``: the apis layer does not import
this one.
"""
from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.model import BaseModel
from mmengine.registry import DefaultScope
from mmengine.structures import InstanceData

from ..apis.toolbox import toolbox_of
from .format import BOX_OUTPUT_NAMES, DEPLOY_FILE, INPUT_NAMES, OUTPUT_NAMES, task_of
from .sessions import DEFAULT_RUNTIME, RuntimeLoadError, check_runtime, open_runtime_session


class ExportedModelMismatch(ValueError):
    """An ONNX file that is not an export of the config's model."""


def open_session(onnx_file: str | os.PathLike, task: str, num_classes: int,
                 threads: int | None = None,
                 runtime: str = DEFAULT_RUNTIME) -> tuple[Any, dict]:
    """A CPU session of ``runtime`` (:mod:`.sessions`: ONNX Runtime or OpenVINO) for
    ``onnx_file`` and its ``deploy.json``, checked.

    Raises:
        FileNotFoundError: the file or its ``deploy.json`` is missing.
        ExportedModelMismatch: input/output names or the number of classes are not the
            config's.
    """
    onnx_file = Path(onnx_file)
    try:
        session = open_runtime_session(onnx_file, runtime, threads)
    except RuntimeLoadError as exc:
        raise ExportedModelMismatch(str(exc)) from None
    inputs, outputs = session.input_names, session.output_names
    expected = [OUTPUT_NAMES[task]] + ([BOX_OUTPUT_NAMES] if task == 'detection' else [])
    if inputs != INPUT_NAMES[task] or outputs not in expected:
        raise ExportedModelMismatch(
            f'{onnx_file}: inputs {inputs} and outputs {outputs}; a {task} model exported by '
            f'tools/export.py has inputs {INPUT_NAMES[task]} and outputs '
            f'{" or ".join(str(names) for names in expected)}')
    info_file = onnx_file.parent / DEPLOY_FILE
    if not info_file.is_file():
        raise FileNotFoundError(f'{info_file}: missing; tools/export.py writes it next to '
                                f'{onnx_file.name}')
    info = json.loads(info_file.read_text())
    if len(info.get('classes', [])) != num_classes:
        raise ExportedModelMismatch(
            f'{onnx_file}: exported with {len(info.get("classes", []))} classes '
            f'({info_file}), the config\'s model has {num_classes}')
    if info.get('output_names') != outputs:
        raise ExportedModelMismatch(f'{info_file}: lists the outputs {info.get("output_names")}, '
                                    f'{onnx_file.name} has {outputs}')
    return session, info


class _ONNXRuntimeModel(BaseModel):
    """Shared part: preprocess with the config's preprocessor, run the session."""

    task = ''

    def __init__(self, onnx_file: str, num_classes: int, data_preprocessor: dict | None = None,
                 threads: int | None = None, init_cfg: dict | None = None,
                 runtime: str = DEFAULT_RUNTIME) -> None:
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        self.onnx_file = str(onnx_file)
        self.session, self.deploy_info = open_session(onnx_file, self.task, num_classes,
                                                      threads, runtime)

    def run(self, inputs: torch.Tensor) -> list[np.ndarray]:
        batch = inputs.detach().cpu().float().contiguous().numpy()
        return self.session.run({'input': batch})

    def forward(self, inputs: torch.Tensor, data_samples: list | None = None,
                mode: str = 'predict') -> list:
        if mode != 'predict':
            raise ValueError(f'{self.onnx_file}: an exported model only predicts (mode={mode!r})')
        return self.predict(inputs, data_samples)


class ONNXRuntimeSegmentor(_ONNXRuntimeModel):
    """An exported mmseg segmentor: sets ``seg_logits`` and ``pred_sem_seg`` at the original size.

    The graph gives the decode head's logits (``seg_logits``, at the head's resolution); the
    rest is mmseg's whole-image post-processing, run here with mmseg's own code: the logits
    resized bilinearly to the input batch's size (``BaseDecodeHead.predict_by_feat``), then
    per image its padding dropped, the logits resized bilinearly to the original size and the
    argmax taken (``BaseSegmentor.postprocess_result``), with the decode head's
    ``align_corners`` (and ``threshold`` for a one-channel head) from ``deploy.json``.
    """

    task = 'segmentation'

    def __init__(self, onnx_file: str, num_classes: int, data_preprocessor: dict | None = None,
                 threads: int | None = None, init_cfg: dict | None = None,
                 runtime: str = DEFAULT_RUNTIME) -> None:
        super().__init__(onnx_file, num_classes, data_preprocessor, threads, init_cfg, runtime)
        missing = [key for key in ('align_corners',) if key not in self.deploy_info]
        if missing:
            raise ExportedModelMismatch(
                f'{onnx_file}: {DEPLOY_FILE} lacks {", ".join(missing)}; export the model '
                'again with tools/export.py')
        # The attributes mmseg's BaseSegmentor.postprocess_result reads from its segmentor.
        self.align_corners = bool(self.deploy_info['align_corners'])
        self.decode_head = _DecodeHeadSettings(self.deploy_info.get('threshold'))

    def predict(self, inputs: torch.Tensor, data_samples: list) -> list:
        from mmseg.models.segmentors.base import BaseSegmentor
        from mmseg.models.utils import resize
        logits = torch.from_numpy(self.run(inputs)[0])  # (N, C, h, w)
        logits = resize(logits, size=tuple(inputs.shape[2:]), mode='bilinear',
                        align_corners=self.align_corners)
        return BaseSegmentor.postprocess_result(self, logits, data_samples)


class _DecodeHeadSettings:
    """What mmseg's post-processing reads from a decode head: the threshold of a one-channel
    (sigmoid) head."""

    def __init__(self, threshold: float | None) -> None:
        self.threshold = threshold


class ONNXRuntimeDetector(_ONNXRuntimeModel):
    """An exported mmdet Faster / Mask / Cascade (Mask) R-CNN: sets ``pred_instances`` at the
    original image size (:func:`detections_to_samples`).

    Args:
        with_mask: Whether the config's model has a mask head; an export with (without)
            ``masks`` is refused for a model without (with) one. ``None``: not checked.
    """

    task = 'detection'

    def __init__(self, onnx_file: str, num_classes: int, with_mask: bool | None = None,
                 data_preprocessor: dict | None = None, threads: int | None = None,
                 init_cfg: dict | None = None, runtime: str = DEFAULT_RUNTIME) -> None:
        super().__init__(onnx_file, num_classes, data_preprocessor, threads, init_cfg, runtime)
        self.output_names = self.session.output_names
        exported = 'masks' in self.output_names
        if with_mask is not None and bool(with_mask) != exported:
            raise ExportedModelMismatch(
                f'{onnx_file}: exported {"with" if exported else "without"} masks; the '
                f'config\'s model has {"a" if with_mask else "no"} mask head')

    def predict(self, inputs: torch.Tensor, data_samples: list) -> list:
        feed = {'input': inputs.detach().cpu().float().contiguous().numpy(),
                'img_shape': np.array([s.img_shape[:2] for s in data_samples], dtype=np.int64)}
        outputs = dict(zip(self.output_names, self.session.run(feed)))
        return detections_to_samples(
            outputs, data_samples, self.deploy_info.get('mask_threshold', 0.5),
            image_masks=self.deploy_info.get('mask_layout') == 'image',
            padded=self.deploy_info.get('padding') != 'none')


def detections_to_samples(outputs: dict[str, Any], data_samples: list,
                          mask_threshold: float = 0.5, image_masks: bool = False,
                          padded: bool = True) -> list:
    """A detection graph's outputs (``dets``, ``labels``, ``masks`` if any: arrays or tensors)
    as mmdet's ``predict(..., rescale=True)`` sets ``pred_instances``.

    The graph clipped the boxes to each image's ``img_shape`` (as mmdet does); here they are
    divided by the resize's ``scale_factor``, and each mask is pasted on its box at the
    original size with mmdet's ``_do_paste_mask`` (one by one, as mmdet does on the CPU) and
    thresholded at ``mask_threshold`` (``>=``; a negative threshold gives uint8 probabilities
    times 255, as mmdet's ``FCNMaskHead``).

    ``image_masks`` (Mask2Former): ``masks`` are probabilities at the input size; each is
    cropped to the image's ``img_shape``, resized bilinearly to the original size and
    thresholded (``> mask_threshold``: mmdet's logit ``> 0``), and its box is mmdet's
    ``mask2bbox`` of the result. ``padded=False``: every row is a
    detection (DINO, Mask2Former); otherwise rows scoring 0 are padding.
    """
    from mmdet.models.roi_heads.mask_heads.fcn_mask_head import _do_paste_mask
    from mmdet.structures.mask import mask2bbox
    dets, labels = (torch.as_tensor(outputs[name]) for name in ('dets', 'labels'))
    masks = torch.as_tensor(outputs['masks']) if 'masks' in outputs else None
    for index, sample in enumerate(data_samples):
        keep = dets[index, :, 4] > 0 if padded else torch.ones_like(dets[index, :, 4]).bool()
        boxes = dets[index][keep]
        bboxes = boxes[:, :4] / boxes.new_tensor(sample.scale_factor).repeat(2)
        instances = InstanceData(bboxes=bboxes, scores=boxes[:, 4],
                                 labels=labels[index][keep].long())
        if masks is not None and image_masks:
            instances.masks = _image_masks_at_original_size(masks[index][keep], sample,
                                                            mask_threshold)
            instances.bboxes = mask2bbox(instances.masks)
        elif masks is not None:
            probabilities = masks[index][keep]
            height, width = sample.ori_shape[:2]
            pasted = torch.zeros(len(bboxes), height, width,
                                 dtype=torch.bool if mask_threshold >= 0 else torch.uint8)
            for i in range(len(bboxes)):
                mask, spatial = _do_paste_mask(probabilities[i][None, None], bboxes[i][None],
                                               height, width, skip_empty=True)
                pasted[(i,) + spatial] = (mask[0] >= mask_threshold if mask_threshold >= 0
                                          else (mask[0] * 255).to(torch.uint8))
            instances.masks = pasted
        sample.pred_instances = instances
    return data_samples


def _image_masks_at_original_size(masks: torch.Tensor, sample: Any,
                                  threshold: float) -> torch.Tensor:
    """(K, H, W) mask probabilities on the padded input as (K, h, w) bool masks at the
    sample's original size: cropped to its ``img_shape``, resized bilinearly, ``> threshold``.
    """
    import torch.nn.functional as F
    height, width = sample.img_shape[:2]
    cropped = masks[:, :height, :width].float()[None]
    resized = F.interpolate(cropped, size=tuple(sample.ori_shape[:2]), mode='bilinear',
                            align_corners=False)
    return resized[0] > threshold


def runtime_model_cfg(cfg: Config, onnx_file: str, runtime: str = DEFAULT_RUNTIME) -> dict:
    """The ``model`` config that runs ``onnx_file`` with ``runtime`` (:mod:`.sessions`) in
    place of the config's model."""
    task = task_of(cfg)
    if task == 'detection' and 'panoptic_head' in cfg.model:  # Mask2Former: instance masks
        head = cfg.model.panoptic_head
        num_classes = head.num_things_classes + head.num_stuff_classes
        model_type = 'ONNXRuntimeDetector'
        extra = dict(with_mask=True)
    elif task == 'detection' and 'roi_head' not in cfg.model:  # DINO: one head, no masks
        num_classes = cfg.model.bbox_head.num_classes
        model_type = 'ONNXRuntimeDetector'
        extra = dict(with_mask=False)
    elif task == 'detection':
        heads = cfg.model.roi_head.bbox_head
        num_classes = (heads[-1] if isinstance(heads, (list, tuple)) else heads).num_classes
        model_type = 'ONNXRuntimeDetector'
        extra = dict(with_mask=bool(cfg.model.roi_head.get('mask_head')))
    else:
        num_classes = cfg.model.decode_head.num_classes
        model_type = 'ONNXRuntimeSegmentor'
        extra = {}
    return dict(type=model_type, onnx_file=str(onnx_file), num_classes=num_classes,
                data_preprocessor=cfg.model.data_preprocessor, runtime=check_runtime(runtime),
                **extra)


def use_onnx_runtime(cfg: Config, onnx_file: str, tta: bool = False,
                     runtime: str = DEFAULT_RUNTIME) -> None:
    """Test an exported ``end2end.onnx`` with ``runtime`` (ONNX Runtime by default, or
    OpenVINO) in place of the config's model (``prepare_test_cfg(...,
    onnx_runtime=use_onnx_runtime)``, as tools/test.py does; ``functools.partial`` chooses the
    runtime)."""
    if tta:
        raise ValueError(f'{onnx_file}: --tta runs the PyTorch model at several scales; an '
                         'exported model is tested as exported (drop --tta)')
    test_cfg = cfg.model.get('test_cfg') or {}
    if test_cfg.get('mode') == 'slide':
        print_log(f'{onnx_file}: the exported segmentor infers on whole images (the config\'s '
                  f'model slides a {tuple(test_cfg.crop_size)} window)', logger='current')
    cfg.model = runtime_model_cfg(cfg, onnx_file, runtime)
    cfg.load_from = None


def load_onnx_model(cfg: Config, onnx_file: str, runtime: str = DEFAULT_RUNTIME) -> BaseModel:
    """The model of ``onnx_file`` run by ``runtime`` for ``cfg``, in eval mode
    (``run_inference(..., load_onnx=load_onnx_model)``, as tools/infer.py does)."""
    toolbox = toolbox_of(cfg)
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    with DefaultScope.overwrite_default_scope(toolbox):
        return registry.build(runtime_model_cfg(cfg, onnx_file, runtime)).eval()
