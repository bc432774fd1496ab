"""Convert an ImageNet ConvNeXt checkpoint into the convnext_dense backbone layout.

Reads the paper's official release (V1/V2), timm (.pth/.safetensors),
mmpretrain, or an mmdet/mmseg model with this backbone; detects the layout and
the arch; writes DST atomically. SRC is never modified, DST is never
overwritten without --force.

Example:
    python tools/convert_checkpoint.py convnext_tiny_1k_224_ema.pth convnext_t.pth
"""
from __future__ import annotations

import argparse
import sys

from convnext_dense import ARCH_SETTINGS
from convnext_dense.checkpoint.convert import convert_and_save
from convnext_dense.checkpoint.io import CheckpointError
from convnext_dense.checkpoint.layouts import CONVERTERS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('src', help='source checkpoint: a path or an http(s) URL')
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument('--src-format', choices=list(CONVERTERS),
                        help='source layout (default: detected from the keys)')
    parser.add_argument('--arch', choices=list(ARCH_SETTINGS),
                        help='expected arch; fail if the weights are another (default: detected)')
    parser.add_argument('--ema', action='store_true',
                        help='take the EMA weights where the checkpoint has both')
    parser.add_argument('--force', action='store_true', help='overwrite an existing DST')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        conversion = convert_and_save(args.src, args.dst, force=args.force,
                                      src_format=args.src_format, arch=args.arch, ema=args.ema)
    except (CheckpointError, FileExistsError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(conversion.report())
    print(f'written:   {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
