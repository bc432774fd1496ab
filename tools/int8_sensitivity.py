"""Per-layer int8 sensitivity of a config's model on random weights: for each weighted
operator, the SQNR of its int8 weight, of its quantized input, and of its output against the
fp32 model (convnext_dense.benchmark.int8_sensitivity says how); Markdown tables.

Example:
    python tools/int8_sensitivity.py configs/upernet_convnext_t_ade20k_512.py --shape 256 256
"""
from __future__ import annotations

import argparse
from pathlib import Path

from convnext_dense.benchmark.int8_sensitivity import markdown, measure
from convnext_dense.utils import atomic_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='a config of a model type that exports (tools/export.py)')
    parser.add_argument('--shape', type=int, nargs=2, default=(256, 256), metavar=('H', 'W'),
                        help='input size (default 256 256: every activation of both models '
                             'is kept in memory)')
    parser.add_argument('--images', type=int, default=2,
                        help='random inputs compared (default 2; the calibration has its own)')
    parser.add_argument('--top', type=int, default=8, help='operators listed by name')
    parser.add_argument('--out', type=Path, help='also write the tables to this Markdown file')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images < 1:
        raise SystemExit(f'--images {args.images}: at least one input is needed')
    shape = tuple(args.shape)
    text = markdown(args.config, shape, measure(args.config, shape, args.images), args.top)
    print(text, end='')
    if args.out:
        with atomic_file(args.out) as f:
            f.write(text.encode())
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
