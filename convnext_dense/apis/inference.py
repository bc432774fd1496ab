"""Run a trained model (``.pth``) or its export (``end2end.onnx``) on the user's own images.

The config's test pipeline prepares each image (without its annotation loading), the model's
``test_step`` predicts, mmdet's/mmseg's visualizer from the config draws the predictions, and
the predictions go to ``predictions.json`` (boxes, scores, labels, class names and COCO RLE
masks; or, for segmentation, the class map as a PNG and the pixels per class).
"""
from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import mmcv
import numpy as np
import torch
from mmengine.config import Config
from mmengine.dataset import Compose, pseudo_collate
from mmengine.registry import DefaultScope
from torch import nn

from .models import build_model, load_trained_weights
from .runner import load_config, toolbox_of

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def collect_images(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found (not recursively) in the named folders."""
    images = []
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
    return images


def load_inference_model(cfg: Config, model_path: str) -> nn.Module:
    """The config's model with ``model_path``'s weights, or ONNX Runtime for an ``.onnx``."""
    if str(model_path).endswith('.onnx'):
        from ..deploy.runtime import runtime_model_cfg
        toolbox = toolbox_of(cfg)
        registry = importlib.import_module(f'{toolbox}.registry').MODELS
        with DefaultScope.overwrite_default_scope(toolbox):
            return registry.build(runtime_model_cfg(cfg, model_path)).eval()
    model = build_model(cfg)
    load_trained_weights(model, model_path)
    return model


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


def run_inference(config: str, model_path: str, inputs: Iterable[str | os.PathLike],
                  out_dir: str | os.PathLike, score_thr: float = 0.3, force: bool = False,
                  cfg_options: dict | None = None) -> Path:
    """Predict, draw and record every image; returns the path of ``predictions.json``.

    Writes ``OUT/vis/<image>.jpg`` (the drawing), ``OUT/predictions.json`` and, for
    segmentation, ``OUT/class_maps/<image>.png``. An ``out_dir`` with files in it is refused
    unless ``force``.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not force:
        raise FileExistsError(f'{out_dir} exists and is not empty; pass --force to write into it')
    images = collect_images(inputs)
    cfg = load_config(config, cfg_options)
    model = load_inference_model(cfg, model_path)
    pipeline = inference_pipeline(cfg)
    meta = dataset_meta(cfg)
    classes = list(meta['classes'])
    visualizer = _visualizer(cfg, meta)
    segmentation = toolbox_of(cfg) == 'mmseg'
    (out_dir / 'vis').mkdir(parents=True, exist_ok=True)
    if segmentation:
        (out_dir / 'class_maps').mkdir(exist_ok=True)
    records = []
    for index, image_path in enumerate(images):
        data = pipeline(dict(img_path=str(image_path), img_id=index))
        with torch.no_grad():
            sample = model.test_step(pseudo_collate([data]))[0]
        image = mmcv.imread(str(image_path), channel_order='rgb')
        name = image_path.stem
        draw_kwargs = {} if segmentation else dict(pred_score_thr=score_thr)
        visualizer.add_datasample(name, image, sample, draw_gt=False, show=False,
                                  out_file=str(out_dir / 'vis' / f'{name}.jpg'), **draw_kwargs)
        record = dict(image=str(image_path), height=int(image.shape[0]),
                      width=int(image.shape[1]))
        if segmentation:
            class_map = sample.pred_sem_seg.data[0].numpy().astype(np.uint16)
            map_path = out_dir / 'class_maps' / f'{name}.png'
            mmcv.imwrite(class_map, str(map_path))
            counts = np.bincount(class_map.reshape(-1), minlength=len(classes))
            record.update(class_map=str(map_path), pixels_per_class={
                classes[c]: int(n) for c, n in enumerate(counts) if n and c < len(classes)})
        else:
            record['instances'] = _detection_record(sample, classes)
        records.append(record)
    predictions = out_dir / 'predictions.json'
    predictions.write_text(json.dumps(dict(config=str(config), model=str(model_path),
                                           classes=classes, images=records), indent=1) + '\n')
    return predictions
