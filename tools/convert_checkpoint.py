"""Convert a pretrained ConvNeXt checkpoint into the convnext_dense backbone layout.

Reads the paper's release (V1, V2, V2 FCMAE pre-training), DINOv3 ConvNeXt,
Hugging Face files and save_pretrained directories, timm (.pth/.safetensors),
mmpretrain, or an mmdet/mmseg model with this backbone; detects the layout and
the arch; writes DST atomically. SRC is never modified, DST is never
overwritten without --force.

With --whole, SRC is a whole trained detector/segmentor (mmdet 3.x / mmseg 1.x
ConvNeXt configs, the paper's mmdet 2.x / mmseg 0.x release, this project's, or a
Hugging Face transformers UperNetForSemanticSegmentation directory or
model.safetensors): only its backbone is renamed (and a transformers UperNet's
head names), neck and heads are kept, and DST is read by load_from,
tools/test.py and tools/infer.py. --config compares every key and shape (and a
transformers UperNet's settings) with the model a config builds and refuses a
misfit.

With --to-hf CONFIG CHECKPOINT OUT_DIR, a UperNet trained with CONFIG is written
as a transformers model directory (config.json, model.safetensors,
preprocessor_config.json) for UperNetForSemanticSegmentation.from_pretrained and
pipeline('image-segmentation'); OUT_DIR is never overwritten.

Examples:
    python tools/convert_checkpoint.py convnext_tiny_1k_224_ema.pth convnext_t.pth
    python tools/convert_checkpoint.py --whole mask-rcnn_convnext-t_coco.pth mask_rcnn_t.pth \
        --config configs/mask_rcnn_convnext_t_coco.py
    python tools/convert_checkpoint.py --whole upernet-convnext-tiny/ upernet_t.pth \
        --config configs/upernet_convnext_t_ade20k_512.py
    python tools/convert_checkpoint.py --to-hf configs/upernet_convnext_t_ade20k_512.py \
        upernet_t.pth upernet-convnext-tiny-hf/
"""
from __future__ import annotations

import argparse
import sys

from convnext_dense import ARCH_SETTINGS
from convnext_dense.apis.hf_export import export_to_hf
from convnext_dense.apis.whole_checkpoints import convert_whole_for_config
from convnext_dense.checkpoint.convert import convert_and_save
from convnext_dense.checkpoint.errors import CheckpointError
from convnext_dense.checkpoint.layouts import CONVERTERS
from convnext_dense.checkpoint.whole_model import WHOLE_LAYOUTS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split('\n\n', 1)[1])
    parser.add_argument('src', nargs='?', help='source checkpoint: a file, a Hugging Face model '
                        'directory (save_pretrained) or an http(s) URL')
    parser.add_argument('dst', nargs='?', help='where to write the converted checkpoint')
    parser.add_argument('--src-format', choices=list(CONVERTERS),
                        help='source layout (default: detected from the keys)')
    parser.add_argument('--arch', choices=list(ARCH_SETTINGS),
                        help='expected arch; fail if the weights are another (default: detected)')
    parser.add_argument('--ema', action='store_true',
                        help='take the EMA weights where the checkpoint has both')
    parser.add_argument('--force', action='store_true', help='overwrite an existing DST')
    whole = parser.add_argument_group('whole detectors and segmentors')
    whole.add_argument('--whole', action='store_true',
                       help='SRC is a whole detector/segmentor: rename its backbone, keep its '
                            f'neck and heads (layouts: {", ".join(WHOLE_LAYOUTS)})')
    whole.add_argument('--config', help='with --whole: refuse unless every key and shape '
                                        'fits the model this config builds')
    out = parser.add_argument_group('to Hugging Face transformers')
    out.add_argument('--to-hf', nargs=3, metavar=('CONFIG', 'CHECKPOINT', 'OUT_DIR'),
                     help='write the UperNet that CONFIG builds, with CHECKPOINT\'s weights, as '
                          'a transformers UperNetForSemanticSegmentation directory (OUT_DIR must '
                          'not exist or be empty); takes no SRC DST')
    args = parser.parse_args(argv)
    if args.to_hf:
        given = [name for name in ('src', 'dst', 'src_format', 'arch', 'config')
                 if getattr(args, name)] + [f for f in ('whole', 'ema', 'force')
                                            if getattr(args, f)]
        if given:
            parser.error(f'--to-hf takes CONFIG CHECKPOINT OUT_DIR only, not '
                         f'{", ".join(given)}')
        return args
    if args.src is None or args.dst is None:
        parser.error('SRC and DST are required (or --to-hf CONFIG CHECKPOINT OUT_DIR)')
    if args.config and not args.whole:
        parser.error('--config checks a whole model: use it with --whole')
    if args.whole and args.ema:
        parser.error('--ema is not supported with --whole (whole models are converted from '
                     'their main weights)')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.to_hf:
            export = export_to_hf(*args.to_hf)
            print(export.report())
            return 0
        if args.whole:
            conversion = convert_whole_for_config(args.src, args.dst, config=args.config,
                                                  force=args.force, src_format=args.src_format,
                                                  arch=args.arch)
        else:
            conversion = convert_and_save(args.src, args.dst, force=args.force,
                                          src_format=args.src_format, arch=args.arch,
                                          ema=args.ema)
    except (CheckpointError, FileExistsError, FileNotFoundError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(conversion.report())
    print(f'written:   {args.dst}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
