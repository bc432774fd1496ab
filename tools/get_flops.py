"""Parameters and FLOPs of configs' models at the paper's input sizes.

COCO models at 1280x800, ADE20K models at 2048x512 (640 crops: 2560x640) by default.

Example:
    python tools/get_flops.py configs/mask_rcnn_convnext_t_coco.py
    python tools/get_flops.py configs/*.py --no-flops     # parameters only (fast)
"""
from __future__ import annotations

import argparse
import sys

from convnext_dense.apis.complexity import model_complexity
from convnext_dense.apis.runner import load_config


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('configs', nargs='+', help='config files')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('HEIGHT', 'WIDTH'),
                        help='input size (default: the paper\'s: 800x1280 for COCO, '
                             '512x2048 or 640x2560 for ADE20K)')
    parser.add_argument('--no-flops', action='store_true', help='count parameters only')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print('| config | input (HxW) | params | FLOPs |')
    print('|---|---|---|---|')
    for path in args.configs:
        result = model_complexity(load_config(path), args.shape, not args.no_flops)
        flops = '-' if result.flops is None else f'{result.flops / 1e9:.0f}G'
        print(f'| {path} | {result.input_size[0]}x{result.input_size[1]} | '
              f'{result.params / 1e6:.1f}M | {flops} |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
