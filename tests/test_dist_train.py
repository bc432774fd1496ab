"""tools/dist_train.sh: two processes through torchrun (gloo on CPU), under DDP and FSDP.

Under DDP the ``ReplicaSyncCheckHook`` compares a digest of every parameter and buffer on
both ranks after each iteration, so the run itself fails if the replicas drift apart.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
import torch

from convnext_dense.demo.data import make_coco_dataset
from tests.conftest import REPO
from tests.test_tools_e2e import coco_options

pytestmark = pytest.mark.slow

CONFIG = REPO / 'configs' / 'mask_rcnn_convnext_t_coco.py'
ATTO_DIMS = (40, 80, 160, 320)
FSDP_CONFIG = """runner_type = 'FlexibleRunner'
strategy = dict(type='FSDPStrategy',
                model_wrapper=dict(type='MMFullyShardedDataParallel', use_orig_params=True))"""


def as_option(values) -> str:
    """A list for ``--cfg-options`` (one argument, no spaces)."""
    return '[' + ','.join(map(str, values)) + ']'


def dist_train(tmp_path: Path, config_lines: str, iterations: int = 1,
               out_indices: tuple[int, ...] = (0, 1, 2, 3)) -> tuple[Path, str]:
    """Train Mask R-CNN (atto backbone) on 2 CPU processes: ``iterations`` steps, evaluation.

    ``config_lines`` go into a config inheriting the repository's: ``--cfg-options``
    cannot hold dicts (mmengine's DictAction). The FPN takes the ``out_indices`` features.
    Returns the work dir and the log.
    """
    # 2 images per rank and step, 2 ranks
    root = make_coco_dataset(tmp_path / 'coco', num_train=4 * iterations, num_val=2,
                             image_size=(128, 160))
    work_dir = tmp_path / 'work'
    options = coco_options(root, ['model.roi_head.bbox_head.num_classes',
                                  'model.roi_head.mask_head.num_classes'], augmentation='resize')
    options += ['model.backbone.arch=atto',
                f'model.backbone.out_indices={as_option(out_indices)}',
                f'model.neck.in_channels={as_option(ATTO_DIMS[i] for i in out_indices)}']
    config = tmp_path / 'overlay.py'
    config.write_text(f'_base_ = [{str(CONFIG)!r}]\n{config_lines}\n')
    # faulthandler: a crashing rank prints every thread's stack into the log; no PORT: torchrun
    # picks a free one (tools/dist_launch.sh)
    env = {k: v for k, v in os.environ.items() if k not in ('PORT', 'NNODES')}
    env.update(OMP_NUM_THREADS='1', PYTHONFAULTHANDLER='1')
    result = subprocess.run(
        ['tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir), '--cfg-options',
         *options], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    (tmp_path / 'dist_train.log').write_text(log)  # kept by pytest for a failed run
    assert result.returncode == 0, log[-5000:]
    # tools/train.py ends the gloo group before exiting (engine/dist.py says why)
    assert 'Destroyed the process group (gloo, 2 ranks)' in log, log[-5000:]
    assert 'distributed training with gloo on the CPU' in log
    assert 'Distributed launcher: pytorch' in log and 'Distributed training: True' in log
    assert 'GPU number: 2' in log  # mmengine's name for the world size
    # one epoch of ``iterations`` iterations, then evaluation
    assert f'Epoch(train) [1][{iterations}/{iterations}]' in log
    assert 'coco/bbox_mAP' in log and 'coco/segm_mAP' in log
    return work_dir, log


def decay_table(log: str) -> list[tuple[int, float, int]]:
    """(layer id, weight decay, tensors) of each row of the layer-decay constructor's table."""
    header = log.index('ConvNeXtLayerDecayOptimizerConstructor: layer_wise decay')
    rows = []
    for line in log[header:].splitlines()[2:]:
        match = re.fullmatch(r'\s*(\d+)\s+[\d.]+\s+[\d.e+-]+\s+([\d.e+-]+)\s+(\d+)\s+[\d,]+',
                             line)
        if match is None:
            break
        rows.append((int(match[1]), float(match[2]), int(match[3])))
    return rows


def test_fsdp_on_two_cpu_processes(tmp_path):
    """FlexibleRunner + FSDPStrategy: the model is sharded over 2 gloo ranks, trains, evaluates."""
    work_dir, log = dist_train(tmp_path, FSDP_CONFIG)
    assert "FSDPStrategy shards the model on the CPU (device_id='cpu')" in log
    # weight decay by the original shapes, not the 1-D shards: conv/linear weights in every
    # layer id decayed, norms/biases/layer scales not (atto: stage 2 has ids 3-4, stage 3 6)
    table = decay_table(log)
    assert {(layer, wd) for layer, wd, _ in table} == {
        (layer, wd) for layer in (0, 1, 2, 3, 4, 6, 7) for wd in (0.0, 0.05)}, table
    # mmengine's default 'local' state dict: one shard per rank
    assert sorted(p.name for p in (work_dir / 'epoch_1.pth').iterdir()) == ['rank0.pth',
                                                                            'rank1.pth']


def test_ddp_trains_a_backbone_with_fewer_stages_without_find_unused_parameters(tmp_path):
    """out_indices=(0, 1, 2): stage 3 is not built, so no parameter goes without a gradient.

    Also the DDP run of the suite: the project's default wrapper (the settings below), the
    replicas identical on both ranks after each of two iterations, the checkpoint saved.

    When stage 3 ran and its output was thrown away, DDP without ``find_unused_parameters``
    never finished the gradient reduction: the replicas already differed after the 1st
    iteration (ReplicaSyncCheckHook), and the 2nd failed ("Expected to have finished
    reduction in the prior iteration"). Hence 2 iterations and the hook.
    """
    work_dir, log = dist_train(tmp_path, """
model_wrapper_cfg = dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                         find_unused_parameters=False)
custom_hooks = [dict(type='ReplicaSyncCheckHook', interval=1)]""",
                               iterations=2, out_indices=(0, 1, 2))
    assert 'Expected to have finished reduction' not in log
    assert 'replicas in sync after iter 2:' in log and 'identical on all 2 ranks' in log
    # the layer-decay groups of the truncated backbone: atto, num_layers=6; ids 0..4 for
    # the stem and stages 0..2, 7 for the output norms, neck and heads; no id 6 (stage 3)
    table = decay_table(log)
    assert {(layer, wd) for layer, wd, _ in table} == {
        (layer, wd) for layer in (0, 1, 2, 3, 4, 7) for wd in (0.0, 0.05)}, table
    state = torch.load(work_dir / 'epoch_1.pth', map_location='cpu', weights_only=False)
    backbone = {k for k in state['state_dict'] if k.startswith('backbone.')}
    assert not any(k.startswith(('backbone.stages.3.', 'backbone.downsample_layers.3.',
                                 'backbone.norm3.')) for k in backbone)
    assert 'backbone.stages.2.5.gamma' in backbone and 'backbone.norm2.weight' in backbone
