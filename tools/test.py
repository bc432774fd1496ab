"""Evaluate a checkpoint of an mmdet or mmseg model (COCO bbox/segm mAP, mIoU, ...).

CHECKPOINT is a .pth, or an end2end.onnx written by tools/export.py (fp32 or int8, run by
ONNX Runtime or, with --runtime openvino, OpenVINO; evaluated with the config's own
evaluator). A .pth whose weights do not fit the config's
model (another number of classes, head type or arch; an unconverted mmdet 3.x / mmseg 1.x
ConvNeXt checkpoint) is refused before anything is evaluated, saying what differs.

Example:
    python tools/test.py configs/upernet_convnext_t_ade20k_512.py work_dirs/upernet/iter_160000.pth
"""
from __future__ import annotations

import argparse
import functools
import numbers
import sys

from convnext_dense.apis.runner import (
    DatasetNotFoundError,
    add_common_arguments,
    build_runner,
    prepare_test_cfg,
)
from convnext_dense.deploy.runtime import use_onnx_runtime  # registers the ONNX Runtime models
from convnext_dense.deploy.sessions import RUNTIMES, runtime_for
from convnext_dense.engine.dist import destroy_process_group_after_success


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    add_common_arguments(parser)
    parser.add_argument('--show-dir', help='save images with the predictions drawn into it')
    parser.add_argument('--tta', action='store_true', help='test-time augmentation '
                        '(multi-scale + flip, as the config\'s tta_pipeline defines)')
    parser.add_argument('--runtime', choices=RUNTIMES,
                        help='runtime of an exported end2end.onnx (default onnxruntime)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # the process group that build_runner (or mmengine) initialises ends with the run
    with destroy_process_group_after_success():
        try:
            runtime = runtime_for(args.checkpoint, args.runtime)
            cfg = prepare_test_cfg(args.config, args.checkpoint, args.work_dir, args.show_dir,
                                   args.tta, args.cfg_options, args.launcher,
                                   onnx_runtime=functools.partial(use_onnx_runtime,
                                                                  runtime=runtime))
            runner = build_runner(cfg)  # an end2end.onnx is opened and checked here
        except (DatasetNotFoundError, FileNotFoundError, ImportError, ValueError) as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 1
        metrics = runner.test()
        # the group can end only when the Runner (its DDP wrapper holds the group) is freed
        del runner
    print({k: round(float(v), 4) if isinstance(v, numbers.Real) else v
           for k, v in metrics.items()})
    return 0


if __name__ == '__main__':
    sys.exit(main())
