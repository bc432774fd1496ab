"""Speed and memory of the ConvNeXt backbone next to timm's, mmpretrain's and the official
design, and whole Mask R-CNN / UperNet training steps with it and with mmpretrain's.

Writes a markdown report (machine, versions, this command, targets, tables) into
work_dirs/benchmark/benchmarks.md, or the file --out names (the committed page:
--out docs/benchmarks.md).

Example:
    python tools/benchmark.py                      # full run -> work_dirs/benchmark/
    python tools/benchmark.py --quick              # T only, fewer repetitions
    python tools/benchmark.py --archs atto --sizes 64 --reps 1 --no-memory --no-detector \\
        --whole-models '' --out /tmp/bench.md      # smoke run
    python tools/benchmark.py --whole-sizes mask_rcnn=800x1333 --whole-batches \\
        mask_rcnn=2,upernet=2 ...                  # the recipes' training inputs (GPU)
"""
from __future__ import annotations

import argparse
import shlex
import signal
import sys
from pathlib import Path

from convnext_dense.benchmark.baselines import ARCH_ALIASES, IMPLS, OPTIONS
from convnext_dense.benchmark.measure import MODES
from convnext_dense.benchmark.onnx_runtime import DEFAULT_PAGE, onnx_section, with_onnx_section
from convnext_dense.benchmark.report import render_markdown
from convnext_dense.benchmark.suite import Results, Settings, run
from convnext_dense.benchmark.whole_models import PAIRS
from convnext_dense.utils import atomic_file


def _size(text: str) -> tuple[int, int]:
    height, _, width = text.partition('x')
    try:
        return int(height), int(width or height)
    except ValueError:
        raise argparse.ArgumentTypeError(f'size must be N or HxW, got {text!r}') from None


def _names(allowed: tuple[str, ...]):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name for name in text.split(',') if name)
        bad = [name for name in names if name not in allowed]
        if bad:
            raise argparse.ArgumentTypeError(f'{bad} not among {", ".join(allowed)}')
        return names
    return parse


def _per_model(value):
    """``name=VALUE,...`` for the whole models."""
    def parse(text: str) -> dict:
        out = {}
        for part in filter(None, text.split(',')):
            name, _, item = part.partition('=')
            if name not in PAIRS or not item:
                raise argparse.ArgumentTypeError(f'expected NAME=VALUE with NAME among '
                                                 f'{", ".join(PAIRS)}, got {part!r}')
            out[name] = value(item)
        return out
    return parse


def _archs(text: str) -> tuple[str, ...]:
    return tuple(ARCH_ALIASES.get(name, name) for name in text.split(',') if name)


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    return tuple(_size(part) for part in text.split(',') if part)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true',
                        help='T only, 10 s of repetitions per setting')
    parser.add_argument('--archs', type=_archs, help='comma-separated, T/S/B or names '
                        '(default tiny,small,base)')
    parser.add_argument('--sizes', type=_sizes, help='comma-separated N or HxW, for every arch '
                        '(default 224,512,800x1216; S and B at 224,512 only)')
    parser.add_argument('--batches', type=int, nargs='+',
                        help='batch size per --sizes entry (default 4, 1, 1 for the defaults)')
    parser.add_argument('--impls', type=_names(IMPLS), help=f'default {",".join(IMPLS)}')
    parser.add_argument('--modes', type=_names(MODES), help=f'default {",".join(MODES)}')
    parser.add_argument('--options', type=_names(OPTIONS), help=f'options of ours to measure '
                        f'(default {",".join(OPTIONS)}); "" for none')
    parser.add_argument('--option-sizes', type=_sizes,
                        help='sizes at which options are measured (default 224,512)')
    parser.add_argument('--memory-sizes', type=_sizes,
                        help='sizes of the peak-memory measurements (default 800x1216)')
    parser.add_argument('--no-memory', action='store_true', help='skip peak memory')
    parser.add_argument('--no-detector', action='store_true', help='skip the whole detector')
    parser.add_argument('--no-profile', action='store_true',
                        help='skip the torch.profiler breakdown of a step')
    parser.add_argument('--detector-size', type=_size,
                        help='detector input HxW (default 800x1333)')
    parser.add_argument('--detector-reps', type=int,
                        help='timed detector inferences, median reported (default 3)')
    parser.add_argument('--whole-models', type=_names(tuple(PAIRS)),
                        help='whole models trained with ours and with mmpretrain\'s backbone '
                             f'(default {",".join(PAIRS)}); "" for none')
    parser.add_argument('--whole-sizes', type=_per_model(_size),
                        help='their inputs, e.g. mask_rcnn=800x1333,upernet=512x512 (the '
                             'recipes\'; default mask_rcnn=640x640,upernet=512x512)')
    parser.add_argument('--whole-batches', type=_per_model(int),
                        help='their batches, e.g. mask_rcnn=2,upernet=2 (the recipes\' per GPU; '
                             'default mask_rcnn=1,upernet=2)')
    parser.add_argument('--whole-reps', type=int,
                        help='timed training steps of each whole model (default 5)')
    parser.add_argument('--mmpretrain-overlay', help='folder with mmpretrain, used when it is '
                        'not installed (default <venv>/overlays/mmpretrain, what make setup '
                        'writes); "" for an installed mmpretrain only')
    parser.add_argument('--warmup', type=int, help='untimed steps per variant (default 1)')
    parser.add_argument('--reps', type=int, help='most timed repetitions per setting (default 7)')
    parser.add_argument('--budget', type=float,
                        help='seconds of timed repetitions per setting, at least 3 of them '
                             '(default 15; --quick 10); 0: always --reps')
    parser.add_argument('--threads', type=int, help='torch threads (default: torch\'s)')
    parser.add_argument('--device', choices=('cpu', 'cuda'), help='default cuda if available')
    parser.add_argument('--note', default='', help='a line added under the machine description')
    parser.add_argument('--out', type=Path, default=DEFAULT_PAGE,
                        help=f'markdown output (default {DEFAULT_PAGE}; the committed page is '
                             '--out docs/benchmarks.md)')
    return parser.parse_args(argv)


def settings_from_args(args: argparse.Namespace) -> Settings:
    """Settings: the defaults, then --quick, then explicit arguments."""
    settings = Settings()
    if args.quick:
        settings.archs = ('tiny',)
        settings.budget_s = 10.0
    if args.budget is not None:
        settings.budget_s = args.budget or None
    for name in ('archs', 'impls', 'modes', 'options', 'option_sizes', 'memory_sizes', 'warmup',
                 'reps', 'threads', 'device', 'detector_reps', 'whole_models', 'whole_reps'):
        value = getattr(args, name)
        if value is not None:
            setattr(settings, name, value)
    if args.sizes is not None:
        settings.sizes = args.sizes
        settings.arch_sizes = {}  # every arch at every given size
        if args.option_sizes is None:
            settings.option_sizes = tuple(s for s in settings.option_sizes if s in args.sizes)
        if args.memory_sizes is None:
            settings.memory_sizes = tuple(s for s in settings.memory_sizes if s in args.sizes)
    settings.compile_sizes = (tuple(s for s in settings.compile_sizes
                                    if s in settings.option_sizes) or settings.option_sizes[:1])
    if args.batches is not None:
        if len(args.batches) != len(settings.sizes):
            raise SystemExit(f'--batches needs one value per size ({len(settings.sizes)})')
        settings.batches = dict(zip(settings.sizes, args.batches))
    if settings.option_arch not in settings.archs:
        settings.option_arch = settings.archs[0]
    if args.no_memory:
        settings.memory_sizes = ()
    if args.detector_size is not None:
        settings.detector_size = args.detector_size
    if args.no_profile:
        settings.profile = False
    if args.no_detector:
        settings.detector_config = None
    settings.whole_sizes.update(args.whole_sizes or {})
    settings.whole_batches.update(args.whole_batches or {})
    if args.mmpretrain_overlay is not None:
        settings.mmpretrain_overlay = args.mmpretrain_overlay or None
    return settings


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = settings_from_args(args)
    command = 'python tools/benchmark.py ' + shlex.join(sys.argv[1:] if argv is None else argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)

    kept = onnx_section(args.out.read_text()) if args.out.is_file() else ''

    def write(results: Results) -> None:
        """(Re)write the report; a run stopped early leaves its last partial report. The
        ONNX Runtime section (tools/benchmark_onnx.py) is carried over."""
        text = render_markdown(results, command.strip(), args.note) + '\n'
        with atomic_file(args.out) as f:
            f.write((with_onnx_section(text, kept) if kept else text).encode())

    # `timeout` and schedulers stop with SIGTERM: end like Ctrl-C, the report already written
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        run(settings, write)
    except KeyboardInterrupt:
        print(f'stopped; partial report in {args.out}', file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
