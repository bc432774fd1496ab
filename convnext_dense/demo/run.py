"""The built-in demo: train, evaluate and draw a ConvNeXt model on the generated shapes data.

``run_demo('det')`` trains Mask R-CNN (``configs/demo/mask_rcnn_convnext_demo.py``),
``run_demo('seg')`` UperNet (``configs/demo/upernet_convnext_demo.py``), ``run_demo('deeplab')``
DeepLabV3+ at output stride 16 (``configs/demo/deeplabv3plus_convnext_demo.py``, the UperNet
demo with DeepLabV3+'s head). The configs inherit the paper's recipes and scale them down for a
CPU. One run:

1. generates the dataset the config describes (``demo_dataset``, written by
   :mod:`convnext_dense.demo_data` at the datasets' ``data_root``; idempotent);
2. trains through the real mmengine Runner (:func:`convnext_dense.runner.prepare_train_cfg`,
   :func:`~convnext_dense.runner.build_runner`), validating on the val split with the config's
   evaluator (mmdet's ``CocoMetric``, mmseg's ``IoUMetric``) during and at the end of training;
3. writes into ``WORK_DIR/<mask_rcnn|upernet|deeplabv3plus>/``: ``metrics.json`` (the final val
   metrics),
   ``predictions.png`` (ground truth | prediction for the first val images, drawn by the
   config's visualizer: mmdet's ``DetLocalVisualizer`` / mmseg's ``SegLocalVisualizer``) and
   ``curves.png`` (training loss and val metrics, read from the run's ``vis_data/scalars.json``).

``quick=True`` shortens the schedule to a smoke run of the same pipeline.
"""
from __future__ import annotations

import copy
import json
import math
import os.path as osp
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.runner import find_latest_checkpoint

from ..apis.config_files import packaged_config
from ..apis.runner import build_runner, load_config, prepare_train_cfg
from ..apis.toolbox import toolbox_of
from .data import DATASET_MAKERS

PathLike = Union[str, Path]

LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
EVALUATORS = ('val_evaluator', 'test_evaluator')


@dataclass(frozen=True)
class DemoTask:
    """One demo: its config, where it writes, what it reports.

    Attributes:
        config: the demo config's name, its path in the repository (found in a clone and in
            an install alike by :func:`~convnext_dense.apis.config_files.packaged_config`).
        out_name: folder under the work dir that receives the run and its pictures.
        metrics: the headline val metrics (keys of the evaluator's result).
        make_target: the Makefile command that runs it.
        quick_options: ``--cfg-options`` of ``quick=True`` (a short schedule).
    """

    config: str
    out_name: str
    metrics: Tuple[str, ...]
    make_target: str
    quick_options: Dict[str, object] = field(default_factory=dict)


def seg_short_schedule(iterations: int) -> Dict[str, object]:
    """``--cfg-options`` that train a segmentation demo for ``iterations`` iterations: the
    linear warm-up over the first two thirds, the poly decay over the rest (as the demo
    configs' 100 of 150), one validation and one checkpoint at the end."""
    warmup = iterations * 2 // 3
    return {'train_cfg.max_iters': iterations, 'train_cfg.val_interval': iterations,
            'param_scheduler.0.end': warmup, 'param_scheduler.1.begin': warmup,
            'param_scheduler.1.end': iterations, 'default_hooks.checkpoint.interval': iterations}


#: The segmentation demos' short schedule (``quick=True``): 150 iterations.
SEG_QUICK_OPTIONS = seg_short_schedule(150)

TASKS: Dict[str, DemoTask] = {
    'det': DemoTask(
        config='configs/demo/mask_rcnn_convnext_demo.py', out_name='mask_rcnn',
        metrics=('coco/bbox_mAP', 'coco/segm_mAP'), make_target='make demo',
        quick_options={'train_cfg.max_epochs': 3, 'train_cfg.val_interval': 3,
                       'param_scheduler.1.end': 3, 'param_scheduler.1.milestones': [3],
                       'default_hooks.checkpoint.interval': 3}),
    'seg': DemoTask(
        config='configs/demo/upernet_convnext_demo.py', out_name='upernet',
        metrics=('mIoU',), make_target='make demo-seg', quick_options=SEG_QUICK_OPTIONS),
    'deeplab': DemoTask(
        config='configs/demo/deeplabv3plus_convnext_demo.py', out_name='deeplabv3plus',
        metrics=('mIoU',), make_target='make demo-deeplab', quick_options=SEG_QUICK_OPTIONS),
}

#: How many validation images ``predictions.png`` shows, and in how many columns.
NUM_PICTURES = 8
PICTURE_COLUMNS = 2


@dataclass
class DemoResult:
    """What a demo run produced.

    Attributes:
        task: a key of :data:`TASKS` (``'det'``, ``'seg'``, ``'deeplab'``).
        metrics: the final val metrics of the evaluator.
        out_dir: the folder with everything below.
        metrics_file: ``metrics.json``.
        predictions_file: ``predictions.png``.
        curves_file: ``curves.png``.
        checkpoint: the final checkpoint.
        seconds: wall time of the whole run.
    """

    task: str
    metrics: Dict[str, float]
    out_dir: Path
    metrics_file: Path
    predictions_file: Path
    curves_file: Path
    checkpoint: Optional[Path]
    seconds: float


def get_task(task: str) -> DemoTask:
    if task not in TASKS:
        raise ValueError(f'task must be one of {sorted(TASKS)}, got {task!r}')
    return TASKS[task]


def _resolve(path: PathLike) -> Path:
    """A path from a config: relative ones are relative to the working directory, as in
    mmengine's datasets (``make demo`` runs from the repository root)."""
    return Path(path).absolute()


def data_root_options(cfg: Config, data_root: PathLike) -> Dict[str, str]:
    """``--cfg-options`` that point every dataloader (and COCO evaluator) at ``data_root``.

    Evaluator annotation files under the config's data root move along with it.
    """
    old_root = cfg.train_dataloader.dataset.data_root
    new_root = str(data_root).rstrip('/') + '/'
    options = {f'{loader}.dataset.data_root': new_root for loader in LOADERS
               if cfg.get(loader) is not None}
    for evaluator in EVALUATORS:
        ann_file = (cfg.get(evaluator) or {}).get('ann_file')
        if ann_file:
            relative = osp.relpath(_resolve(ann_file), _resolve(old_root))
            if relative.startswith('..'):
                raise ValueError(f'{cfg.filename}: {evaluator}.ann_file {ann_file!r} is not '
                                 f'under the data root {old_root!r}')
            options[f'{evaluator}.ann_file'] = osp.join(new_root, relative)
    return options


def prepare_demo_data(cfg: Config, data_root: Optional[PathLike] = None) -> Path:
    """Generate (or find) the dataset ``cfg.demo_dataset`` describes; return its folder.

    Args:
        cfg: a demo config (``demo_dataset`` = generator format and arguments).
        data_root: where to put it; default: the config's ``data_root`` (relative to the
            repository root).
    """
    spec = dict(cfg.get('demo_dataset') or {})
    fmt = spec.pop('format', None)
    if fmt not in DATASET_MAKERS:
        raise ValueError(f'{cfg.filename}: demo_dataset.format must be one of '
                         f'{sorted(DATASET_MAKERS)}, got {fmt!r}')
    root = Path(data_root) if data_root else _resolve(cfg.train_dataloader.dataset.data_root)
    if 'image_size' in spec:
        spec['image_size'] = tuple(spec['image_size'])
    start = time.perf_counter()
    print_log(f'Demo dataset ({fmt}, {spec}): {root}', logger='current')
    DATASET_MAKERS[fmt](root, **spec)
    print_log(f'Demo dataset ready after {time.perf_counter() - start:.1f} s', logger='current')
    return root


def prepare_demo_cfg(task: str, work_dir: PathLike = 'work_dirs/demo', quick: bool = False,
                     data_root: Optional[PathLike] = None,
                     cfg_options: Optional[dict] = None) -> Config:
    """Generate the demo data if needed and return the training config of ``task``.

    Args:
        task: a key of :data:`TASKS` (``'det'``, ``'seg'``, ``'deeplab'``).
        work_dir: the demo's work dir; this task's run goes to ``work_dir/<out_name>``.
        quick: use the short schedule of :data:`TASKS` (a smoke run).
        data_root: where the dataset lives (and is generated); default: the config's.
        cfg_options: further overrides, applied last (may change ``demo_dataset.*``).
    """
    spec = get_task(task)
    config = packaged_config(spec.config)
    options = dict(spec.quick_options) if quick else {}
    options.update(cfg_options or {})
    cfg = load_config(config, options)
    root = prepare_demo_data(cfg, data_root)
    options.update(data_root_options(cfg, root))
    return prepare_train_cfg(config, str(Path(work_dir) / spec.out_name), cfg_options=options)


class _LastValMetrics(Hook):
    """Keeps the metrics of the latest validation (the train loop validates at the end)."""

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self.metrics: Dict[str, float] = {}

    def after_val_epoch(self, runner, metrics: Optional[Dict[str, float]] = None) -> None:
        self.metrics = {key: float(value) for key, value in (metrics or {}).items()}


def run_demo(task: str, work_dir: PathLike = 'work_dirs/demo', quick: bool = False,
             data_root: Optional[PathLike] = None,
             cfg_options: Optional[dict] = None) -> DemoResult:
    """Generate the data, train, evaluate on val, and write metrics and pictures.

    Arguments as :func:`prepare_demo_cfg`.
    """
    start = time.perf_counter()
    cfg = prepare_demo_cfg(task, work_dir, quick, data_root, cfg_options)
    return train_and_report(task, cfg, start)


def train_and_report(task: str, cfg: Config, start: Optional[float] = None) -> DemoResult:
    """Train ``cfg`` (from :func:`prepare_demo_cfg`), then write metrics and pictures.

    Args:
        task: a key of :data:`TASKS` (``'det'``, ``'seg'``, ``'deeplab'``).
        cfg: the prepared training config.
        start: ``time.perf_counter()`` at the start of the run (data preparation included).
    """
    start = time.perf_counter() if start is None else start
    spec = get_task(task)
    runner = build_runner(cfg, for_training=True)
    last_val = _LastValMetrics()
    runner.register_hook(last_val)
    runner.train()
    metrics = last_val.metrics or {k: float(v) for k, v in runner.val().items()}

    out_dir = Path(cfg.work_dir)
    latest = find_latest_checkpoint(str(out_dir))
    checkpoint = Path(latest) if latest else None
    metrics_file = out_dir / 'metrics.json'
    metrics_file.write_text(json.dumps(dict(
        task=task, config=spec.config, dataset=str(cfg.val_dataloader.dataset.data_root),
        split='val', num_images=len(runner.val_dataloader.dataset), metrics=metrics,
        checkpoint=str(checkpoint) if checkpoint else None), indent=1) + '\n')
    predictions_file = out_dir / 'predictions.png'
    draw_predictions(runner, predictions_file)
    curves_file = out_dir / 'curves.png'
    plot_curves(Path(runner.log_dir) / 'vis_data' / 'scalars.json', curves_file, spec.metrics,
                _iters_per_val_step(runner))
    result = DemoResult(task=task, metrics=metrics, out_dir=out_dir, metrics_file=metrics_file,
                        predictions_file=predictions_file, curves_file=curves_file,
                        checkpoint=checkpoint, seconds=time.perf_counter() - start)
    print_log(summary(result, spec), logger='current')
    return result


def _iters_per_val_step(runner) -> int:
    """Iterations per ``step`` of the val records in scalars.json (epochs or iterations)."""
    from mmengine.hooks import LoggerHook
    by_epoch = any(getattr(hook, 'log_metric_by_epoch', False) for hook in runner.hooks
                   if isinstance(hook, LoggerHook))
    return len(runner.train_dataloader) if by_epoch else 1


def summary(result: DemoResult, spec: DemoTask) -> str:
    minutes, seconds = divmod(round(result.seconds), 60)
    headline = ', '.join(f'{key} {result.metrics[key]:.3f}' for key in spec.metrics
                         if key in result.metrics)
    lines = [f'Demo {result.task} done in {minutes}m{seconds:02d}s: {headline} (val split)',
             f'  metrics:     {result.metrics_file}',
             f'  predictions: {result.predictions_file}  (ground truth | prediction)',
             f'  curves:      {result.curves_file}']
    if result.checkpoint:
        lines.append(f'  checkpoint:  {result.checkpoint}')
    return '\n'.join(lines)


# --- pictures ------------------------------------------------------------------------------


def draw_predictions(runner, out_file: PathLike, num_images: int = NUM_PICTURES,
                     columns: int = PICTURE_COLUMNS, pred_score_thr: float = 0.5) -> Path:
    """Predict the first val images and save a grid of ground truth | prediction pairs.

    Drawn by a fresh instance of the config's visualizer (mmdet's ``DetLocalVisualizer``,
    mmseg's ``SegLocalVisualizer``); detections below ``pred_score_thr`` are left out.
    """
    import mmcv
    import torch
    from mmengine.dataset import pseudo_collate
    from mmengine.registry import VISUALIZERS

    dataset = runner.val_dataloader.dataset
    vis_cfg = copy.deepcopy(runner.cfg.visualizer)
    vis_cfg.update(name=f'convnext_dense_demo_{time.time_ns()}', vis_backends=None)
    vis_cfg.pop('save_dir', None)
    visualizer = VISUALIZERS.build(vis_cfg)
    visualizer.dataset_meta = dataset.metainfo
    is_det = toolbox_of(runner.cfg) == 'mmdet'

    model = runner.model
    model.eval()
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        for index in range(min(num_images, len(dataset))):
            with torch.no_grad():
                sample = model.test_step(pseudo_collate([dataset[index]]))[0]
            image = mmcv.imread(sample.img_path, channel_order='rgb')
            extra = dict(pred_score_thr=pred_score_thr) if is_det else dict(with_labels=False)
            # Through a file: mmseg's visualizer keeps only the prediction as its image.
            drawn = Path(tmp) / f'{index}.png'
            visualizer.add_datasample(Path(sample.img_path).name, image, data_sample=sample,
                                      draw_gt=True, draw_pred=True, show=False,
                                      out_file=str(drawn), **extra)
            cells.append(mmcv.imread(str(drawn), channel_order='rgb'))
    grid = _grid(cells, columns, header=('ground truth', 'prediction'))
    out_file = Path(out_file)
    mmcv.imwrite(grid[..., ::-1], str(out_file))
    return out_file


def _grid(cells: Sequence[np.ndarray], columns: int, header: Sequence[str],
          gap: int = 6) -> np.ndarray:
    """Tile RGB images (each a side-by-side pair) into rows of ``columns``, with a header."""
    import cv2

    height = max(cell.shape[0] for cell in cells)
    width = max(cell.shape[1] for cell in cells)
    rows = math.ceil(len(cells) / columns)
    top = 28
    grid = np.full((top + rows * (height + gap), columns * (width + gap) - gap, 3), 255,
                   np.uint8)
    for i, cell in enumerate(cells):
        y, x = top + (i // columns) * (height + gap), (i % columns) * (width + gap)
        grid[y:y + cell.shape[0], x:x + cell.shape[1]] = cell
    part = width / len(header)
    for col in range(columns):
        for j, text in enumerate(header):
            (text_w, _), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.6, 1)
            x = int(col * (width + gap) + (j + 0.5) * part - text_w / 2)
            cv2.putText(grid, text, (x, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1,
                        cv2.LINE_AA)
    return grid


def read_scalars(path: PathLike) -> Tuple[List[dict], List[dict]]:
    """Split mmengine's ``vis_data/scalars.json`` into training and validation records."""
    train, val = [], []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            record = json.loads(line)
            (train if 'loss' in record else val).append(record)
    return train, val


def plot_curves(scalars_file: PathLike, out_file: PathLike, metrics: Sequence[str],
                iters_per_val_step: int = 1) -> Path:
    """Plot the training loss and the val ``metrics`` over iterations into a PNG.

    Args:
        scalars_file: mmengine's ``vis_data/scalars.json`` of the run.
        out_file: the PNG to write.
        metrics: val metric keys to plot.
        iters_per_val_step: iterations per unit of a val record's ``step`` (the iterations
            of an epoch for epoch-based runs, whose val steps count epochs; else 1).
    """
    from matplotlib.figure import Figure

    train, val = read_scalars(scalars_file)
    fig = Figure(figsize=(11, 4), dpi=100, layout='constrained')
    loss_ax, metric_ax = fig.subplots(1, 2)
    steps = [r['step'] for r in train]
    for key in sorted({k for r in train for k in r if k.startswith('loss')}):
        values = [r.get(key, np.nan) for r in train]
        if key == 'loss':
            loss_ax.plot(steps, values, color='black', linewidth=2, label='loss (total)')
        else:
            loss_ax.plot(steps, values, linewidth=1, alpha=0.8, label=key)
    loss_ax.set(title='training loss', xlabel='iteration', yscale='log')
    loss_ax.grid(True, alpha=0.3)
    loss_ax.legend(fontsize=8)
    for key in metrics:
        points = [(r['step'] * iters_per_val_step, r[key]) for r in val if key in r]
        if points:
            xs, ys = zip(*points)
            metric_ax.plot(xs, ys, marker='o', label=f'{key} (final {ys[-1]:.3g})')
    values = [r[key] for r in val for key in metrics if key in r]
    metric_ax.set(title='validation', xlabel='iteration', xlim=(0, max(steps, default=1) * 1.02),
                  ylim=(0, 1 if max(values, default=0) <= 1 else 100))
    metric_ax.grid(True, alpha=0.3)
    metric_ax.legend(fontsize=8)
    out_file = Path(out_file)
    fig.savefig(out_file)
    return out_file


__all__ = ['DemoResult', 'DemoTask', 'TASKS', 'data_root_options', 'draw_predictions',
           'plot_curves', 'prepare_demo_cfg', 'prepare_demo_data', 'read_scalars', 'run_demo',
           'train_and_report']
