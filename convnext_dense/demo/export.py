"""The demo carried through deployment: export the trained demo model, evaluate it with ONNX
Runtime next to PyTorch, and draw its predictions (``make demo-export``)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Union

from mmengine.logging import print_log

from ..apis.config_files import packaged_config
from ..apis.inference import IMAGE_SUFFIXES, run_inference
from ..apis.runner import build_runner, load_config, prepare_test_cfg
from ..deploy.export import export_onnx
from ..deploy.runtime import load_onnx_model, use_onnx_runtime
from .run import data_root_options, get_task

PathLike = Union[str, Path]
#: How many validation images ``onnx_infer/`` draws.
NUM_INFER_IMAGES = 4


def last_checkpoint(run_dir: Path, task: str) -> Path:
    """The checkpoint the demo run of ``run_dir`` saved last."""
    marker = run_dir / 'last_checkpoint'
    if not marker.is_file():
        raise FileNotFoundError(f'{run_dir}: no trained demo model (no last_checkpoint); run '
                                f'`{get_task(task).make_target}` first')
    return Path(marker.read_text().strip())


def _val_images(cfg, count: int) -> list[Path]:
    dataset = cfg.test_dataloader.dataset
    prefix = dataset.data_prefix.get('img') or dataset.data_prefix.get('img_path')
    folder = Path(dataset.data_root) / prefix
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return images[:count]


def export_demo(task: str, work_dir: PathLike = 'work_dirs/demo',
                data_root: Optional[PathLike] = None) -> Dict[str, Dict[str, float]]:
    """Export ``task``'s trained demo model and compare ONNX Runtime with PyTorch on val.

    Writes ``WORK_DIR/<task>/onnx/`` (the export, replaced on each run), ``onnx_metrics.json``
    (both metrics and their difference) and ``onnx_infer/`` (ONNX Runtime's predictions on
    the first validation images, drawn, and their JSON).

    Returns:
        ``{'pytorch': metrics, 'onnxruntime': metrics}`` of the task's headline metrics.
    """
    spec = get_task(task)
    run_dir = Path(work_dir) / spec.out_name
    checkpoint = last_checkpoint(run_dir, task)
    config = packaged_config(spec.config)
    options = data_root_options(load_config(config), data_root) if data_root else {}
    onnx_file = export_onnx(config, str(checkpoint), run_dir / 'onnx', force=True,
                            cfg_options=options)
    print_log(f'Exported {checkpoint} to {onnx_file}', logger='current')
    metrics: Dict[str, Dict[str, float]] = {}
    for name, model in (('pytorch', checkpoint), ('onnxruntime', onnx_file)):
        cfg = prepare_test_cfg(config, str(model), str(run_dir / f'test_{name}'),
                               cfg_options=options, onnx_runtime=use_onnx_runtime)
        cfg.visualizer.pop('name', None)  # a visualizer of its own per runner
        results = build_runner(cfg).test()
        metrics[name] = {key: float(results[key]) for key in spec.metrics}
    images = _val_images(load_config(config, options), NUM_INFER_IMAGES)
    run_inference(config, str(onnx_file), images, run_dir / 'onnx_infer', force=True,
                  cfg_options=options, load_onnx=load_onnx_model)
    report = dict(metrics, difference={key: metrics['onnxruntime'][key] - metrics['pytorch'][key]
                                       for key in spec.metrics})
    (run_dir / 'onnx_metrics.json').write_text(json.dumps(report, indent=2) + '\n')
    lines = [f'{key}: PyTorch {metrics["pytorch"][key]:.4f}, ONNX Runtime '
             f'{metrics["onnxruntime"][key]:.4f}' for key in spec.metrics]
    print_log('Demo export: ' + '; '.join(lines) + f' ({run_dir / "onnx_metrics.json"})',
              logger='current')
    return metrics
