"""Run a trained model (``.pth``) or its export (``end2end.onnx``) on the user's own images.

The config's test pipeline prepares each image (without its annotation loading), the model's
``test_step`` predicts, mmdet's/mmseg's visualizer from the config draws the predictions, and
each image's record (boxes, scores, labels, class names and COCO RLE masks; or, for
segmentation, the class map as a PNG and the pixels per class) is on disk before the next
image starts. The output folder's layout and rules are in :mod:`.infer_outputs`.

Why not mmdet's ``DetInferencer`` / mmseg's ``MMSegInferencer``: they are two code paths with
different outputs (the project keeps one for both toolboxes), they load weights with
mmengine's non-strict loading (a checkpoint of another model would predict garbage instead of
being refused), cannot run the project's ONNX Runtime exports from a ``.onnx`` path, name
their outputs by the image's file name alone (``a/x.jpg`` and ``b/x.jpg`` overwrite each
other), keep the predictions in memory until a batch or the run ends, and stop at the first
unreadable image. What they do that this does not: batches of several images (on a GPU,
batching would speed a large folder up; here each image is written before the next starts).
Progress is shown with mmengine's ``ProgressBar`` (count, rate, ETA) as mmengine's test loop
does.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import DefaultScope
from mmengine.utils import ProgressBar
from torch import nn

from ..utils import atomic_file, first_n_and_more
from .infer_outputs import (
    CLASS_MAP_DIR,
    JSON_FILE,
    VIS_DIR,
    RecordWriter,
    check_infer_dir,
    class_map_names,
    output_names,
    remove_earlier_output,
)
from .models import build_model, load_trained_weights
from .runner import is_onnx, load_config, refuse_onnx_without_runtime
from .toolbox import toolbox_of

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (not recursively) in the named folders; a file
    reached twice (named and in a named folder) is listed once."""
    images: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise FileNotFoundError(f'{path}: no images ({", ".join(IMAGE_SUFFIXES)}) in '
                                        'this folder')
            images.extend(found)
        elif path.is_file():
            images.append(path)
        else:
            raise FileNotFoundError(f'{path}: no such image or folder')
    seen: set[str] = set()
    return [image for image in images
            if not (os.path.abspath(image) in seen or seen.add(os.path.abspath(image)))]


def inference_device(device: str | None, model_path: str) -> str:
    """The device to run ``model_path`` on: ``device`` checked, or the default (a ``.pth``:
    ``cuda`` if available, else ``cpu``, as mmdet's and mmseg's inferencers choose; an
    ``.onnx``: ``cpu``).

    Raises:
        ValueError: ``device`` is not ``cpu``, ``cuda`` or ``cuda:N`` of this machine, or is a
            CUDA device for an ``.onnx`` (it runs on ONNX Runtime's CPU execution provider).
    """
    onnx = is_onnx(model_path)
    if device is None:
        return 'cpu' if onnx or not torch.cuda.is_available() else 'cuda'
    try:
        parsed = torch.device(device)
    except RuntimeError:
        parsed = None
    if parsed is None or parsed.type not in ('cpu', 'cuda'):
        raise ValueError(f'--device {device}: expected cpu, cuda or cuda:N')
    if onnx and parsed.type != 'cpu':
        raise ValueError(f'--device {device}: {model_path} runs on ONNX Runtime\'s CPU '
                         'execution provider here; give --device cpu or leave --device out '
                         '(or run the .pth on the GPU)')
    if parsed.type == 'cuda':
        if not torch.cuda.is_available():
            raise ValueError(f'--device {device}: no CUDA device is available here '
                             '(torch.cuda.is_available() is False); use --device cpu')
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f'--device {device}: this machine has '
                             f'{torch.cuda.device_count()} CUDA device(s), cuda:0 .. '
                             f'cuda:{torch.cuda.device_count() - 1}')
    return str(parsed)


#: Builds the model that runs an exported ``.onnx`` for a config (ONNX Runtime, CPU).
LoadOnnx = Callable[[Config, str], nn.Module]


def load_inference_model(cfg: Config, model_path: str, device: str = 'cpu',
                         load_onnx: LoadOnnx | None = None) -> nn.Module:
    """The config's model with ``model_path``'s weights on ``device``, or, for an ``.onnx``,
    what ``load_onnx`` builds (tools/infer.py passes
    :func:`convnext_dense.deploy.runtime.load_onnx_model`: ONNX Runtime on the CPU)."""
    if is_onnx(model_path):
        refuse_onnx_without_runtime(model_path, load_onnx)
        return load_onnx(cfg, model_path)
    model = build_model(cfg)
    load_trained_weights(model, model_path)
    return model.to(device)


def inference_pipeline(cfg: Config) -> Compose:
    """The config's test pipeline without annotation loading."""
    steps = [step for step in cfg.test_dataloader.dataset.pipeline
             if step['type'] != 'LoadAnnotations']
    with DefaultScope.overwrite_default_scope(toolbox_of(cfg)):
        return Compose(steps)


def dataset_meta(cfg: Config) -> dict:
    """Class names and palette of the config's test dataset."""
    dataset = cfg.test_dataloader.dataset
    meta = dict(dataset.get('metainfo') or {})
    if 'classes' not in meta or 'palette' not in meta:
        toolbox = toolbox_of(cfg)
        importlib.import_module(f'{toolbox}.datasets')
        registry = importlib.import_module(f'{toolbox}.registry').DATASETS
        meta = {**registry.get(dataset.type).METAINFO, **meta}
    return meta


def _visualizer(cfg: Config, meta: dict) -> Any:
    toolbox = toolbox_of(cfg)
    importlib.import_module(f'{toolbox}.visualization')
    registry = importlib.import_module(f'{toolbox}.registry').VISUALIZERS
    visualizer_cfg = dict(cfg.visualizer, name=f'infer_{time.monotonic_ns()}', vis_backends=None,
                          save_dir=None)
    with DefaultScope.overwrite_default_scope(toolbox):
        visualizer = registry.build(visualizer_cfg)
    visualizer.dataset_meta = meta
    return visualizer


def _detection_record(sample: Any, classes: list[str]) -> list[dict]:
    from pycocotools import mask as mask_utils
    instances = sample.pred_instances
    records = []
    for i in range(len(instances.scores)):
        record = dict(bbox=[round(float(v), 2) for v in instances.bboxes[i]],
                      score=round(float(instances.scores[i]), 5),
                      label=int(instances.labels[i]), class_name=classes[int(instances.labels[i])])
        if 'masks' in instances:
            rle = mask_utils.encode(np.asfortranarray(instances.masks[i].numpy().astype(np.uint8)))
            record['mask'] = dict(size=rle['size'], counts=rle['counts'].decode())
        records.append(record)
    return records


@dataclass
class InferenceResult:
    """What :func:`run_inference` wrote: ``predictions.json`` and the images that failed."""

    predictions: Path
    num_images: int
    failed: list[dict] = field(default_factory=list)


def _read_image(path: Path) -> np.ndarray:
    """The image as RGB, or an exception saying why it cannot be read."""
    image = mmcv.imread(str(path))  # BGR, None when OpenCV cannot decode the bytes
    if image is None:
        raise ValueError('not an image OpenCV can decode')
    return mmcv.bgr2rgb(image)


def run_inference(config: str, model_path: str, inputs: Iterable[str | os.PathLike],
                  out_dir: str | os.PathLike, score_thr: float = 0.3, force: bool = False,
                  cfg_options: dict | None = None, device: str | None = None,
                  progress: bool = True, load_onnx: LoadOnnx | None = None) -> InferenceResult:
    """Predict, draw and record every image into ``out_dir`` (layout: :mod:`.infer_outputs`).

    Args:
        config: Config file (or shipped config name).
        model_path: Trained weights (``.pth``, refused if they do not fit the config's model)
            or an ``end2end.onnx``.
        inputs: Image files and folders of images (not recursive).
        out_dir: New or empty folder; an earlier run's output is replaced with ``force``
            (deleted once the model and images are ready); anything else is refused.
        score_thr: Detections drawn from this score up (all are recorded).
        device: ``cpu``, ``cuda`` or ``cuda:N`` for a ``.pth`` (default: ``cuda`` if
            available); an ``.onnx`` runs on the CPU.
        progress: Show a progress bar (count, rate, ETA) on stderr.
        load_onnx: Builds the model for an ``.onnx`` (:func:`load_inference_model`); an
            ``.onnx`` without it is refused.

    An image that cannot be read is recorded with its ``error`` and the run goes on; the
    result lists such images in ``failed``.
    """
    out_dir = Path(out_dir)
    inputs = list(inputs)
    earlier = check_infer_dir(out_dir, force)
    images = collect_images(inputs)
    names = output_names(images, inputs)
    device = inference_device(device, model_path)
    cfg = load_config(config, cfg_options)
    model = load_inference_model(cfg, model_path, device, load_onnx)
    pipeline = inference_pipeline(cfg)
    meta = dataset_meta(cfg)
    classes = list(meta['classes'])
    visualizer = _visualizer(cfg, meta)
    segmentation = toolbox_of(cfg) == 'mmseg'
    remove_earlier_output(out_dir, earlier)
    out_dir.mkdir(parents=True, exist_ok=True)
    map_names = class_map_names(names) if segmentation else []
    records, failed = [], []
    writer = RecordWriter(out_dir)
    bar = ProgressBar(len(images), file=sys.stderr) if progress else None
    try:
        for index, (image_path, name) in enumerate(zip(images, names)):
            try:
                image = _read_image(image_path)
            except Exception as exc:  # cv2, OSError, ...: name the file, go on
                failure = dict(image=str(image_path), error=f'{type(exc).__name__}: {exc}')
                writer.write(failure)
                failed.append(failure)
            else:
                record = _predict_and_write(model, pipeline, visualizer, image, image_path,
                                            index, name, map_names[index] if segmentation
                                            else None, out_dir, classes, score_thr, writer)
                records.append(record)
            if bar is not None:
                bar.update()
    finally:
        writer.close()
        if bar is not None:
            sys.stderr.write('\n')
    predictions = out_dir / JSON_FILE
    with atomic_file(predictions) as f:
        f.write((json.dumps(dict(config=str(config), model=str(model_path), classes=classes,
                                 images=records, failed=failed), indent=1) + '\n').encode())
    return InferenceResult(predictions, len(images), failed)


def _predict_and_write(model: nn.Module, pipeline: Compose, visualizer: Any,
                       image: np.ndarray, image_path: Path, index: int, name: str,
                       map_name: str | None, out_dir: Path, classes: list[str],
                       score_thr: float, writer: RecordWriter) -> dict:
    """One image: predict, record (on disk first), then draw and save its class map."""
    data = pipeline(dict(img_path=str(image_path), img_id=index))
    with torch.no_grad():
        sample = model.test_step(pseudo_collate([data]))[0].cpu()
    record = dict(image=str(image_path), height=int(image.shape[0]),
                  width=int(image.shape[1]), vis=f'{VIS_DIR}/{name}')
    class_map = None
    if map_name is not None:
        class_map = sample.pred_sem_seg.data[0].numpy().astype(np.uint16)
        counts = np.bincount(class_map.reshape(-1), minlength=len(classes))
        record.update(class_map=f'{CLASS_MAP_DIR}/{map_name}', pixels_per_class={
            classes[c]: int(n) for c, n in enumerate(counts) if n and c < len(classes)})
    else:
        record['instances'] = _detection_record(sample, classes)
    writer.write(record)  # before the files it names: an interrupted run stays recognisable
    if class_map is not None:
        mmcv.imwrite(class_map, str(out_dir / record['class_map']))
    draw_kwargs = {} if map_name is not None else dict(pred_score_thr=score_thr)
    visualizer.add_datasample(name, image, sample, draw_gt=False, show=False,
                              out_file=str(out_dir / record['vis']), **draw_kwargs)
    return record


def describe_failures(result: InferenceResult) -> str:
    """``'2 of 10 images could not be read: a.jpg (ValueError: ...), ...'``."""
    listed = [f'{f["image"]} ({f["error"]})' for f in result.failed]
    return (f'{len(result.failed)} of {result.num_images} images could not be read (recorded '
            f'with their error in {result.predictions}): {first_n_and_more(listed)}')
