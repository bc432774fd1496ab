"""The demo carried through deployment: export the trained demo model (fp32, and int8 where its
model type's quantization is verified), evaluate it with ONNX Runtime and OpenVINO next to
PyTorch, and draw its predictions (``make demo-export``)."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Dict, Optional, Union

from mmengine.logging import print_log

from ..apis.config_files import packaged_config
from ..apis.inference import IMAGE_SUFFIXES, run_inference
from ..apis.runner import build_runner, load_config, prepare_test_cfg
from ..deploy.export import export_onnx
from ..deploy.quantize import export_int8, int8_policy
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
                data_root: Optional[PathLike] = None,
                calib_images: Optional[int] = None) -> Dict[str, Dict[str, float]]:
    """Export ``task``'s trained demo model and compare the exports' runtimes with PyTorch on
    val.

    Writes ``WORK_DIR/<task>/onnx/`` (the fp32 export, replaced on each run), ``onnx_int8/``
    (the int8 export, calibrated on the demo's own training set, for the model types whose
    int8 export is verified: :data:`~convnext_dense.deploy.quantize.VERIFIED_POLICIES`),
    ``onnx_metrics.json`` (the metrics of each and the differences: ONNX Runtime against
    PyTorch, int8 against fp32, OpenVINO against ONNX Runtime) and ``onnx_infer/`` (ONNX
    Runtime's predictions on the first validation images, drawn, and their JSON).
    ``calib_images`` calibrates the int8 export on that many training images (default
    :data:`~convnext_dense.deploy.quantize.DEFAULT_CALIB_IMAGES`, or all of a smaller set).

    Returns:
        The task's headline metrics of ``'pytorch'``, ``'onnxruntime'``, ``'openvino'`` and,
        with an int8 export, ``'onnxruntime_int8'`` and ``'openvino_int8'``.
    """
    spec = get_task(task)
    run_dir = Path(work_dir) / spec.out_name
    checkpoint = last_checkpoint(run_dir, task)
    config = packaged_config(spec.config)
    options = data_root_options(load_config(config), data_root) if data_root else {}
    cfg = load_config(config, options)
    onnx_file = export_onnx(config, str(checkpoint), run_dir / 'onnx', force=True,
                            cfg_options=options)
    print_log(f'Exported {checkpoint} to {onnx_file}', logger='current')
    runs = [('pytorch', checkpoint, 'onnxruntime'), ('onnxruntime', onnx_file, 'onnxruntime'),
            ('openvino', onnx_file, 'openvino')]
    if int8_policy(cfg) is not None:
        int8_file = export_int8(config, str(checkpoint), run_dir / 'onnx_int8', calib_images,
                                force=True, cfg_options=options, fp32_export=onnx_file)
        print_log(f'Exported {checkpoint} to {int8_file} (int8)', logger='current')
        runs += [('onnxruntime_int8', int8_file, 'onnxruntime'),
                 ('openvino_int8', int8_file, 'openvino')]
    metrics: Dict[str, Dict[str, float]] = {}
    for name, model, runtime in runs:
        test_cfg = prepare_test_cfg(
            config, str(model), str(run_dir / f'test_{name}'), cfg_options=options,
            onnx_runtime=functools.partial(use_onnx_runtime, runtime=runtime))
        results = build_runner(test_cfg).test()
        metrics[name] = {key: float(results[key]) for key in spec.metrics}
    images = _val_images(cfg, NUM_INFER_IMAGES)
    run_inference(config, str(onnx_file), images, run_dir / 'onnx_infer', force=True,
                  cfg_options=options, load_onnx=load_onnx_model)
    pairs = {'difference': ('onnxruntime', 'pytorch'),
             'openvino_difference': ('openvino', 'onnxruntime'),
             'int8_difference': ('onnxruntime_int8', 'onnxruntime'),
             'openvino_int8_difference': ('openvino_int8', 'onnxruntime_int8')}
    report = dict(metrics, **{name: {key: metrics[a][key] - metrics[b][key]
                                     for key in spec.metrics}
                              for name, (a, b) in pairs.items() if a in metrics})
    (run_dir / 'onnx_metrics.json').write_text(json.dumps(report, indent=2) + '\n')
    lines = [f'{key}: ' + ', '.join(f'{name} {values[key]:.4f}'
                                     for name, values in metrics.items())
             for key in spec.metrics]
    print_log('Demo export: ' + '; '.join(lines) + f' ({run_dir / "onnx_metrics.json"})',
              logger='current')
    return metrics
