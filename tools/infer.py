"""Run a trained model (.pth) or its export (end2end.onnx) on your own images.

Draws the predictions with mmdet's/mmseg's visualizer into OUT/vis/ and writes
OUT/predictions.json (and, for segmentation, the class maps into OUT/class_maps/).

Example:
    python tools/infer.py configs/demo/mask_rcnn_convnext_demo.py \
        work_dirs/demo/mask_rcnn/epoch_8.pth my_pictures/ --out-dir work_dirs/infer
"""
from __future__ import annotations

import argparse
import sys

from convnext_dense.apis.inference import run_inference
from convnext_dense.checkpoint.io import CheckpointError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Predict on images or folders of images')
    parser.add_argument('config', help='config file (or shipped config name)')
    parser.add_argument('model', help='trained weights (.pth) or an exported end2end.onnx')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', required=True, help='where drawings and JSON go')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections drawn from this score up (all go into the JSON)')
    parser.add_argument('--force', action='store_true', help='write into a non-empty --out-dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        path = run_inference(args.config, args.model, args.inputs, args.out_dir,
                             args.score_thr, args.force, args.cfg_options)
    except (CheckpointError, FileExistsError, FileNotFoundError, ImportError,
            ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
