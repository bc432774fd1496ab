"""Run a trained model (.pth) or its export (end2end.onnx) on your own images.

Draws the predictions with mmdet's/mmseg's visualizer into OUT/vis/ and records them in
OUT/predictions.jsonl as each image is done and in OUT/predictions.json at the end (for
segmentation, the class maps go into OUT/class_maps/). Outputs keep the images' relative
paths (a/x.jpg and b/x.jpg stay apart). An image that cannot be read is named and skipped;
the exit status is then 1.

Example:
    python tools/infer.py configs/demo/mask_rcnn_convnext_demo.py \
        work_dirs/demo/mask_rcnn/epoch_8.pth my_pictures/ --out-dir work_dirs/infer
"""
from __future__ import annotations

import argparse
import functools
import sys

from convnext_dense.apis.inference import describe_failures, run_inference
from convnext_dense.checkpoint.errors import CheckpointError
from convnext_dense.deploy.runtime import load_onnx_model  # registers the ONNX Runtime models
from convnext_dense.deploy.sessions import RUNTIMES, runtime_for


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description='Predict on images or folders of images')
    parser.add_argument('config', help='config file (or shipped config name)')
    parser.add_argument('model', help='trained weights (.pth) or an exported end2end.onnx')
    parser.add_argument('inputs', nargs='+', help='image files and/or folders of images')
    parser.add_argument('--out-dir', '--out', dest='out_dir', required=True,
                        help='output folder: new, empty, or an earlier tools/infer.py output '
                             '(with --force)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detections drawn from this score up (all go into the JSON)')
    parser.add_argument('--device', help='cpu, cuda or cuda:N for a .pth (default: cuda if '
                        'available, else cpu); an .onnx runs on the CPU (--runtime)')
    parser.add_argument('--runtime', choices=RUNTIMES,
                        help='runtime of an exported end2end.onnx (default onnxruntime)')
    parser.add_argument('--force', action='store_true',
                        help='replace an earlier tools/infer.py output in --out-dir (the '
                             'predictions files and the drawings and class maps they list); '
                             'a folder holding other files is never written into')
    parser.add_argument('--no-progress', dest='progress', action='store_false',
                        help='no progress bar on stderr')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings')
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runtime = runtime_for(args.model, args.runtime)
        result = run_inference(args.config, args.model, args.inputs, args.out_dir,
                               args.score_thr, args.force, args.cfg_options, args.device,
                               args.progress,
                               load_onnx=functools.partial(load_onnx_model, runtime=runtime))
    except (CheckpointError, FileExistsError, FileNotFoundError, ImportError,
            ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 1
    print(f'wrote {result.predictions} ({result.num_images - len(result.failed)} of '
          f'{result.num_images} images)')
    if result.failed:
        print(f'error: {describe_failures(result)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
