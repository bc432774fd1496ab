"""The built-in demo: train and evaluate a ConvNeXt model on generated shapes, draw the result.

Generates the demo dataset under data/demo/ if needed, trains with the real mmengine Runner
(Mask R-CNN for `det`, UperNet for `seg`, DeepLabV3+ at output stride 16 for `deeplab`;
configs/demo/), evaluates on the val split and writes metrics.json, predictions.png and
curves.png into WORK_DIR/mask_rcnn, WORK_DIR/upernet or WORK_DIR/deeplabv3plus. About 10 to 15
minutes per task on 2 CPU cores; --quick is a short smoke run.
--export (after training) exports the trained model to ONNX, evaluates it with ONNX Runtime
next to PyTorch (onnx_metrics.json) and draws its predictions (onnx_infer/); where the model
type's int8 export is verified, the same for an int8 export calibrated on --calib-images training
images (onnx_int8/).

Example:
    python tools/demo.py det
    python tools/demo.py seg --work-dir work_dirs/demo --quick
    python tools/demo.py det --export
"""
from __future__ import annotations

import argparse
import sys
import time

from mmengine.config import DictAction

from convnext_dense.apis.runner import DatasetNotFoundError
from convnext_dense.demo.run import TASKS, prepare_demo_cfg, train_and_report
from convnext_dense.deploy.quantize import DEFAULT_CALIB_IMAGES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('task', nargs='?', choices=sorted(TASKS), default='det',
                        help='det: Mask R-CNN (COCO metrics); seg: UperNet (mIoU); '
                             'deeplab: DeepLabV3+ at output stride 16 (mIoU)')
    parser.add_argument('--work-dir', default='work_dirs/demo',
                        help='output folder; the task writes into its own subfolder')
    parser.add_argument('--quick', action='store_true',
                        help='a short schedule: checks the pipeline, does not reach the targets')
    parser.add_argument('--export', action='store_true',
                        help='do not train: export the trained demo model to ONNX and '
                             'evaluate it with ONNX Runtime next to PyTorch')
    parser.add_argument('--calib-images', type=int, metavar='N',
                        help='--export: calibrate the int8 export on N training images '
                             f'(default {DEFAULT_CALIB_IMAGES}, or all of a smaller set)')
    parser.add_argument('--data-root', help='where the demo dataset is (or is generated); '
                        "default: the config's, relative to the repository root")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. train_cfg.max_epochs=4')
    args = parser.parse_args(argv)
    if args.calib_images is not None and not args.export:
        parser.error('--calib-images calibrates the int8 export of --export; add --export')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    if args.export:
        from convnext_dense.demo.export import export_demo
        try:
            export_demo(args.task, args.work_dir, args.data_root, args.calib_images)
        except (FileNotFoundError, ImportError, ValueError) as exc:
            print(f'error: {exc}', file=sys.stderr)
            return 1
        return 0
    try:
        cfg = prepare_demo_cfg(args.task, args.work_dir, args.quick, args.data_root,
                               args.cfg_options)
    except (DatasetNotFoundError, FileExistsError, FileNotFoundError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    train_and_report(args.task, cfg, start)
    return 0


if __name__ == '__main__':
    sys.exit(main())
