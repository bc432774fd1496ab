"""ONNX Runtime against PyTorch eager on this CPU: UperNet-T at 512x512, Mask R-CNN-T at
800x1344 (the padded 800x1333 test scale), same threads, one process; a Markdown table.

Example:
    python tools/benchmark_onnx.py --threads 2 --reps 5
"""
from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import onnxruntime
import torch

from convnext_dense.benchmark.onnx_runtime import (
    SECTION_END,
    SECTION_START,
    compare,
    markdown,
    with_onnx_section,
)
from convnext_dense.utils import atomic_file

CASES = [('configs/upernet_convnext_t_ade20k_512.py', (512, 512)),
         ('configs/mask_rcnn_convnext_t_coco.py', (800, 1344))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--threads', type=int, default=2, help='threads of both runtimes')
    parser.add_argument('--reps', type=int, default=5, help='timed rounds (median)')
    parser.add_argument('--out', type=Path, default=Path('docs/benchmarks.md'),
                        help='page whose ONNX Runtime section is (re)written')
    args = parser.parse_args(argv)
    results = []
    for config, shape in CASES:
        results.append(compare(config, shape, args.threads, args.reps))
        print(markdown(results[-1:]).splitlines()[-1], flush=True)
    command = 'python tools/benchmark_onnx.py ' + ' '.join(sys.argv[1:] if argv is None else argv)
    section = '\n'.join([
        SECTION_START, '## ONNX Runtime against PyTorch eager', '',
        f'`{command.strip()}`: random-weight models exported by `tools/export.py`; PyTorch eager '
        'runs the exported module, ONNX Runtime (CPU provider) the file, the same computation '
        f'(post-processing included), batch 1, median of {args.reps} alternating rounds after '
        f'one warm-up, {args.threads} threads each; torch {torch.__version__}, onnxruntime '
        f'{onnxruntime.__version__}, {platform.processor() or platform.machine()}. The last '
        "column is ONNX Runtime's profiler: kernel time by operator type.", '',
        markdown(results).rstrip('\n'), SECTION_END, ''])
    text = args.out.read_text() if args.out.is_file() else ''
    with atomic_file(args.out) as f:
        f.write(with_onnx_section(text, section).encode())
    print(f'wrote the ONNX Runtime section of {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
