"""ONNX Runtime and OpenVINO, fp32 and int8, against PyTorch eager on this CPU: UperNet-T at
512x512, Mask R-CNN-T and DINO-T at 800x1344 (the padded 800x1333 test scale), same threads,
interleaved rounds, one process; Markdown tables.

Written as a section of work_dirs/benchmark/benchmarks.md, or of the page --out names.

Example:
    python tools/benchmark_onnx.py --threads 2 --reps 5 --out docs/benchmarks.md
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from convnext_dense.benchmark.onnx_runtime import (
    DEFAULT_PAGE,
    compare,
    markdown,
    section_text,
    with_onnx_section,
)
from convnext_dense.utils import atomic_file

CASES = {'upernet': ('configs/upernet_convnext_t_ade20k_512.py', (512, 512)),
         'mask_rcnn': ('configs/mask_rcnn_convnext_t_coco.py', (800, 1344)),
         'dino': ('configs/dino_4scale_convnext_t_coco.py', (800, 1344))}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='threads of both runtimes')
    parser.add_argument('--reps', type=int, default=5, help='timed rounds (median)')
    parser.add_argument('--cases', nargs='+', choices=list(CASES), default=list(CASES),
                        help='which models to time (default all)')
    parser.add_argument('--note', default='', help='a sentence added to the section (e.g. what '
                        'else ran on the machine)')
    parser.add_argument('--out', type=Path, default=DEFAULT_PAGE,
                        help=f'page whose exported-runtimes section is (re)written (default '
                             f'{DEFAULT_PAGE}, the page tools/benchmark.py writes by default; '
                             'the committed page is --out docs/benchmarks.md)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    for config, shape in (CASES[name] for name in args.cases):
        results.append(compare(config, shape, args.threads, args.reps))
        print(markdown(results[-1:]), flush=True)
    command = 'python tools/benchmark_onnx.py ' + shlex.join(sys.argv[1:] if argv is None else argv)
    section = section_text(results, command.strip(), args.reps, args.threads, args.note)
    text = args.out.read_text() if args.out.is_file() else ''
    with atomic_file(args.out) as f:
        f.write(with_onnx_section(text, section).encode())
    print(f'wrote the exported-runtimes section of {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
