"""Generate the built-in demo shapes dataset in COCO or ADE20K layout.

Deterministic (same arguments, byte-identical files) and idempotent: a second
run into the same folder returns at once; a folder holding other content is
refused, never overwritten. Layouts and classes: see convnext_dense/demo_data.py.

Example:
    python tools/make_demo_data.py coco data/demo_coco
    python tools/make_demo_data.py ade20k data/demo_ade20k --num-train 200 --num-val 50
"""
from __future__ import annotations

import argparse
import sys
import time

from convnext_dense.demo.data import DATASET_MAKERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('format', choices=list(DATASET_MAKERS), help='dataset layout')
    parser.add_argument('root', help='target folder (created if missing)')
    parser.add_argument('--num-train', type=int, default=200, help='training images')
    parser.add_argument('--num-val', type=int, default=50, help='validation images')
    parser.add_argument('--image-size', type=int, nargs=2, default=(256, 320),
                        metavar=('H', 'W'), help='image height and width')
    parser.add_argument('--seed', type=int, default=0, help='random seed')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    try:
        root = DATASET_MAKERS[args.format](args.root, num_train=args.num_train,
                                           num_val=args.num_val,
                                           image_size=tuple(args.image_size), seed=args.seed)
    except (ValueError, FileExistsError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(f'{args.format} demo dataset ({args.num_train} train + {args.num_val} val images) '
          f'ready in {root} after {time.perf_counter() - start:.1f} s')
    return 0


if __name__ == '__main__':
    sys.exit(main())
