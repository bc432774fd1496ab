"""Export a config's model with trained weights to ``DIR/end2end.onnx`` + ``DIR/deploy.json``.

The graph is traced with ``torch.onnx.export(..., dynamo=False)`` (the TorchScript-based
exporter that ships with torch; the dynamo exporter needs onnxscript and does not take
these models' data-dependent post-processing) from :mod:`.segmentation` or :mod:`.detection`.
``deploy.json`` holds what a runtime needs around the graph: task, input/output names,
mean/std and channel order, the test resize and padding, and the class names.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from torch import nn

from ..apis.inference import dataset_meta
from ..apis.models import build_model, build_random_model, load_trained_weights
from ..apis.runner import load_config
from ..apis.toolbox import toolbox_of
from .errors import ExportError
from .format import (
    BOX_OUTPUT_NAMES,
    DEPLOY_FILE,
    EXPORTED_QUERY_DECODE_HEADS,
    INPUT_NAMES,
    ONNX_FILE,
    OUTPUT_NAMES,
    require_onnx,
    task_of,
)
from .output_dir import check_output_dir, staged_output

DEFAULT_OPSET = 17


def export_graph(model: nn.Module, task: str) -> nn.Module:
    """The module whose forward is the exported graph."""
    if task == 'segmentation':
        if type(model.decode_head).__name__ in EXPORTED_QUERY_DECODE_HEADS:
            from .mask2former import Mask2FormerSegmentorExport
            return Mask2FormerSegmentorExport(model)
        from .segmentation import SegmentorExport
        return SegmentorExport(model)
    if type(model).__name__ == 'DINO':
        from .dino import DINOExport
        return DINOExport(model)
    if type(model).__name__ == 'Mask2Former':
        from .mask2former import Mask2FormerDetectorExport
        return Mask2FormerDetectorExport(model)
    from .detection import TwoStageDetectorExport
    return TwoStageDetectorExport(model)


def check_exportable(model: nn.Module, task: str) -> None:
    """Refuse, before any tracing, a model whose settings the graph would not honour.

    Raises:
        ExportError: naming each such setting (detectors: :func:`.detection.check_detector`,
            DINO: :func:`.dino.check_dino`, Mask2Former: :func:`.mask2former.check_mask2former`).
    """
    if type(model).__name__ == 'DINO':
        from .dino import check_dino
        check_dino(model)
    elif type(model).__name__ == 'Mask2Former':
        from .mask2former import check_mask2former
        check_mask2former(model)
    elif task == 'detection':
        from .detection import check_detector
        check_detector(model)


def graph_output_names(cfg: Config, task: str) -> list[str]:
    """The graph's outputs: a detector without a mask head (DINO) has no ``masks``."""
    if _model_type(cfg) == 'Mask2Former':
        return list(OUTPUT_NAMES[task])
    if task == 'detection' and not (cfg.model.get('roi_head') or {}).get('mask_head'):
        return list(BOX_OUTPUT_NAMES)
    return list(OUTPUT_NAMES[task])


#: detectors whose outputs are the best K queries, every row a detection (no padding rows)
QUERY_DETECTORS = ('DINO', 'Mask2Former')


def _model_type(cfg: Config) -> str:
    return str(cfg.model.type).split('.')[-1]


def graph_inputs(task: str, batch: torch.Tensor,
                 img_shapes: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The graph's inputs (:data:`INPUT_NAMES`, in order) for a preprocessed ``batch``.

    Args:
        task: ``'detection'`` or ``'segmentation'``.
        batch: (N, 3, H, W) as the config's data preprocessor makes it.
        img_shapes: detectors: (N, 2) each image's (height, width) before padding; default:
            every image fills the whole input.
    """
    if task != 'detection':
        return {'input': batch}
    if img_shapes is None:
        img_shapes = torch.tensor([list(batch.shape[2:])] * len(batch))
    return {'input': batch, 'img_shape': torch.as_tensor(img_shapes, dtype=torch.int64)}


def _test_resize(cfg: Config) -> dict | None:
    for step in cfg.test_dataloader.dataset.get('pipeline', []):
        if step.get('type') == 'Resize':
            return {k: step[k] for k in ('scale', 'scale_factor', 'keep_ratio') if k in step}
    return None


def deploy_info(cfg: Config, task: str, opset: int, dynamic: bool,
                shape: tuple[int, int]) -> dict[str, Any]:
    """What a runtime needs around ``end2end.onnx`` (written as ``deploy.json``)."""
    preprocessor = cfg.model.data_preprocessor
    to_rgb = bool(preprocessor.get('bgr_to_rgb', preprocessor.get('rgb_to_bgr', False)))
    info = dict(
        task=task, toolbox=toolbox_of(cfg), model_type=cfg.model.type, opset=opset,
        input_names=INPUT_NAMES[task], output_names=graph_output_names(cfg, task),
        dynamic=dynamic, traced_shape=list(shape),
        mean=list(preprocessor.get('mean', [0, 0, 0])),
        std=list(preprocessor.get('std', [1, 1, 1])),
        channel_order='RGB' if to_rgb else 'BGR (as loaded)',
        pad_size_divisor=preprocessor.get('pad_size_divisor'),
        test_resize=_test_resize(cfg), classes=list(dataset_meta(cfg)['classes']))
    if _model_type(cfg) in QUERY_DETECTORS:
        # every row is a detection: the best max_per_img(age), whatever their score
        info.update(score_threshold=0.0, padding='none')
        if _model_type(cfg) == 'Mask2Former':  # mask probabilities at the input size
            info.update(mask_layout='image', mask_threshold=0.5)
    elif task == 'detection':
        info['score_threshold'] = float(cfg.model.test_cfg.rcnn.score_thr)
        if 'masks' in info['output_names']:
            info['mask_threshold'] = float(cfg.model.test_cfg.rcnn.mask_thr_binary)
    if task == 'segmentation':
        from .segmentation import postprocess_info
        info.update(postprocess_info(cfg))
    return info


def default_shape(cfg: Config, task: str) -> tuple[int, int]:
    """The traced input size: the segmentor's crop, or the detector's test scale padded."""
    if task == 'segmentation':
        size = cfg.model.data_preprocessor.get('size') or (512, 512)
        return int(size[0]), int(size[1])
    resize = _test_resize(cfg) or {}
    width, height = resize.get('scale', (1333, 800))
    long_side, short_side = max(width, height), min(width, height)
    return tuple(-(-s // 32) * 32 for s in (short_side, long_side))


def check_shape(shape: tuple[int, int]) -> tuple[int, int]:
    if len(shape) != 2 or any(int(s) <= 0 or int(s) % 32 for s in shape):
        raise ExportError(f'--shape {" ".join(str(s) for s in shape)}: height and width must be '
                          'positive multiples of 32 (the backbone\'s stride)')
    return int(shape[0]), int(shape[1])


def export_onnx(config: str, checkpoint: str | None, out_dir: str | os.PathLike,
                shape: tuple[int, int] | None = None, dynamic: bool = True,
                opset: int = DEFAULT_OPSET, force: bool = False,
                cfg_options: dict | None = None) -> Path:
    """Export ``config``'s model with ``checkpoint``'s weights into ``out_dir``.

    Args:
        config: Config file (or shipped config name).
        checkpoint: Trained weights (mmengine checkpoint or state dict); ``None`` exports
            seeded random weights (:func:`~convnext_dense.apis.models.build_random_model`,
            seed 0), for tests.
        out_dir: Output directory: new, empty, or (with ``force``) an earlier export
            (:func:`is_previous_export`); a folder holding anything else is refused. Written
            to a staging folder next to it and swapped in by rename when complete
            (:mod:`.output_dir`), so a failure leaves nothing half done.
        shape: (H, W) traced input size, multiples of 32; default from the config.
        dynamic: Dynamic batch, height and width (default); ``False`` fixes them to ``shape``
            and batch 1.
        opset: ONNX opset (>= 16: RoIAlign with ``aligned=True``).

    Returns:
        The path of ``end2end.onnx``.
    """
    onnx, _ = require_onnx()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force, is_previous_export, 'export', EXPORT_FILES)
    if opset < 16:
        raise ExportError(f'--opset {opset}: 16 or newer is needed (RoIAlign with aligned=True, '
                          'GridSample)')
    cfg = load_config(config, cfg_options)
    task = task_of(cfg)
    shape = check_shape(tuple(shape) if shape else default_shape(cfg, task))
    model = build_model(cfg) if checkpoint is not None else build_random_model(cfg, seed=0)
    check_exportable(model, task)
    if checkpoint is not None:
        load_trained_weights(model, checkpoint)
    graph = export_graph(model, task).eval()
    output_names = graph_output_names(cfg, task)
    axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}, 'img_shape': {0: 'batch'}}
    inputs = graph_inputs(task, torch.zeros(1, 3, *shape))
    axes = {name: axis for name, axis in axes.items() if name in inputs}
    for name in output_names:
        axes[name] = {0: 'batch', 2: 'logits_height', 3: 'logits_width'} if (
            task == 'segmentation') else {0: 'batch'}
    if _model_type(cfg) == 'Mask2Former':  # masks at the input size
        axes['masks'] = {0: 'batch', 2: 'height', 3: 'width'}

    # written next to out_dir, swapped in when complete (out_dir checked again then)
    with staged_output(out_dir, force, is_previous_export, 'export', EXPORT_FILES) as staging:
        onnx_path = staging / ONNX_FILE
        with torch.no_grad():
            torch.onnx.export(graph, tuple(inputs.values()), str(onnx_path), dynamo=False,
                              opset_version=opset, input_names=list(inputs),
                              output_names=output_names,
                              dynamic_axes=axes if dynamic else None)
        onnx.checker.check_model(str(onnx_path))
        info = deploy_info(cfg, task, opset, dynamic, shape)
        (staging / DEPLOY_FILE).write_text(json.dumps(info, indent=2) + '\n')
    return out_dir / ONNX_FILE


#: What an export writes into its folder, and nothing else.
EXPORT_FILES = (ONNX_FILE, DEPLOY_FILE)
#: Keys every ``deploy.json`` this exporter writes has.
_DEPLOY_KEYS = ('task', 'toolbox', 'model_type', 'input_names', 'output_names', 'classes')


def is_previous_export(folder: Path) -> bool:
    """Whether ``folder`` holds exactly an export of :func:`export_onnx`: the files
    ``end2end.onnx`` and ``deploy.json`` and nothing else, ``deploy.json`` with the keys
    the exporter writes (``--force`` replaces such a folder, and only such a folder)."""
    if sorted(p.name for p in folder.iterdir()) != sorted(EXPORT_FILES):
        return False
    if any((folder / name).is_symlink() or not (folder / name).is_file()
           for name in EXPORT_FILES):
        return False
    try:
        info = json.loads((folder / DEPLOY_FILE).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (isinstance(info, dict) and all(key in info for key in _DEPLOY_KEYS)
            and info['task'] in OUTPUT_NAMES)
