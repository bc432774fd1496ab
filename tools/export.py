"""Export a trained detector or segmentor to ONNX (DIR/end2end.onnx + DIR/deploy.json).

Example:
    python tools/export.py configs/upernet_convnext_t_ade20k_512.py \
        work_dirs/upernet/iter_160000.pth \
        --out-dir work_dirs/upernet/onnx
    python tools/export.py configs/upernet_convnext_t_ade20k_512.py \
        work_dirs/upernet/iter_160000.pth \
        --out-dir work_dirs/upernet/onnx_int8 --int8 --calib-images 256
"""
from __future__ import annotations

import argparse
import sys

from convnext_dense.checkpoint.errors import CheckpointError
from convnext_dense.deploy.export import DEFAULT_OPSET, ExportError, export_onnx
from convnext_dense.deploy.quantize import DEFAULT_CALIB_IMAGES, export_int8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Export a model to ONNX with its '
                                     'post-processing (NMS, masks; the class map)')
    parser.add_argument('config', help='config file (or shipped config name)')
    parser.add_argument('checkpoint', help='trained weights (.pth)')
    parser.add_argument('--out-dir', '--out', dest='out_dir', required=True,
                        help='output folder: new, empty, or an earlier export (with --force)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                        help='traced input size, multiples of 32 (default: from the config)')
    parser.add_argument('--dynamic', action=argparse.BooleanOptionalAction, default=True,
                        help='dynamic batch, height and width (default); --no-dynamic fixes '
                             'them to batch 1 and --shape')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (>= 16)')
    parser.add_argument('--force', action='store_true',
                        help='replace an earlier export in --out-dir (end2end.onnx + '
                             'deploy.json); a folder holding other files is never replaced')
    parser.add_argument('--int8', action='store_true',
                        help='quantize to int8 (ONNX Runtime static quantization, QDQ, '
                             'per-channel weights), calibrated on training images')
    parser.add_argument('--calib-images', type=int, metavar='N',
                        help=f'--int8: calibration images from the config\'s training set '
                             f'(default {DEFAULT_CALIB_IMAGES}, or all of a smaller set)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    args = parser.parse_args(argv)
    if args.calib_images is not None and not args.int8:
        parser.error('--calib-images calibrates an --int8 export; add --int8')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.int8:
            path = export_int8(args.config, args.checkpoint, args.out_dir, args.calib_images,
                               args.shape, args.dynamic, args.opset, args.force,
                               args.cfg_options)
        else:
            path = export_onnx(args.config, args.checkpoint, args.out_dir, args.shape,
                               args.dynamic, args.opset, args.force, args.cfg_options)
    except (CheckpointError, ExportError, FileExistsError, FileNotFoundError,
            ImportError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(f'wrote {path} and {path.parent / "deploy.json"}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
