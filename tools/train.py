"""Train an mmdet or mmseg model from a config (the toolbox is read from the config).

Example:
    python tools/train.py configs/mask_rcnn_convnext_t_coco.py --work-dir work_dirs/mrcnn
"""
from __future__ import annotations

import argparse
import sys

from convnext_dense.apis.runner import (
    DatasetNotFoundError,
    add_common_arguments,
    build_runner,
    prepare_train_cfg,
)
from convnext_dense.engine.dist import destroy_process_group_after_success
from convnext_dense.engine.work_dir_lock import WorkDirBusyError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector or segmentor')
    parser.add_argument('config', help='train config file path')
    add_common_arguments(parser)
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from the given checkpoint, or from the latest one in the '
                             'work dir when no path is given')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (AmpOptimWrapper; fp32 on a machine without GPU)')
    parser.add_argument('--seed', type=int, help='random seed (randomness.seed); the ADE20K '
                        'configs default to the release\'s 0, the COCO configs draw one')
    parser.add_argument('--deterministic', action='store_true',
                        help='randomness.deterministic=True: cuDNN deterministic and '
                             'torch.use_deterministic_algorithms (raises on CUDA for ops '
                             'without a deterministic kernel, e.g. UperNet\'s)')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = prepare_train_cfg(args.config, args.work_dir, args.resume, args.amp,
                                args.cfg_options, args.launcher, args.seed, args.deterministic)
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    try:
        # the process group that build_runner (or mmengine) initialises ends with the run
        with destroy_process_group_after_success():
            build_runner(cfg, for_training=True).train()
    except WorkDirBusyError as exc:  # another run trains into this work_dir
        print(f'error: {exc}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
