"""ReplicaSyncCheckHook fails a real 2-process DDP job whose replicas drift apart.

tools/dist_train.sh runs Mask R-CNN (atto backbone, tiny images) on two gloo ranks. A
small hook, imported by the job's config, changes one element of one backbone weight
by one ulp on rank 1 only, right after the first optimizer step; DDP keeps gradients in
sync but never re-broadcasts parameters, so the replicas now differ. The check must stop
the job with ``ReplicaMismatchError`` naming that tensor and rank 1.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from convnext_dense.demo.data import make_coco_dataset
from tests.conftest import REPO
from tests.test_dist_train import CONFIG
from tests.test_tools_e2e import coco_options

pytestmark = pytest.mark.slow

DRIFTED = 'backbone.stages.2.1.pwconv1.weight'

DRIFT_HOOK = '''
import torch
from mmengine.dist import get_rank
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module()
class DriftOnRankHook(Hook):
    """After iteration ``after_iter``, move one element of ``tensor`` by one ulp on ``rank``."""

    priority = 'NORMAL'  # runs before ReplicaSyncCheckHook (LOW) in the same iteration

    def __init__(self, rank, tensor, after_iter=1):
        self.rank, self.tensor, self.after_iter = rank, tensor, after_iter

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if get_rank() != self.rank or runner.iter + 1 != self.after_iter:
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        param = dict(model.named_parameters())[self.tensor]
        with torch.no_grad():
            flat = param.view(-1)
            flat[0] = torch.nextafter(flat[0], flat[0] + 1)
        print(f'DriftOnRankHook: rank {get_rank()} nudged {self.tensor} after iter '
              f'{runner.iter + 1}', flush=True)
'''

OVERLAY_CONFIG = f'''_base_ = [{str(CONFIG)!r}]
custom_imports = dict(imports=['convnext_dense', 'drift_hook'], allow_failed_imports=False)
custom_hooks = [dict(type='DriftOnRankHook', rank=1, tensor={DRIFTED!r}),
                dict(type='ReplicaSyncCheckHook', interval=1)]
'''


def test_drifting_replicas_stop_a_two_process_job(tmp_path: Path):
    root = make_coco_dataset(tmp_path / 'coco', num_train=4, num_val=2, image_size=(128, 160))
    options = coco_options(root, ['model.roi_head.bbox_head.num_classes',
                                  'model.roi_head.mask_head.num_classes'], augmentation='resize')
    options += ['model.backbone.arch=atto', 'model.neck.in_channels=[40,80,160,320]']
    modules = tmp_path / 'modules'
    modules.mkdir()
    (modules / 'drift_hook.py').write_text(DRIFT_HOOK)
    config = tmp_path / 'drift.py'
    config.write_text(OVERLAY_CONFIG)
    work_dir = tmp_path / 'work'
    env = dict({k: v for k, v in os.environ.items() if k not in ('PORT', 'NNODES')},
               OMP_NUM_THREADS='1', PYTHONPATH=os.pathsep.join(filter(None, [str(modules),
                                                        os.environ.get('PYTHONPATH')])))
    result = subprocess.run(
        ['tools/dist_train.sh', str(config), '2', '--work-dir', str(work_dir), '--cfg-options',
         *options], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = result.stdout + result.stderr
    assert result.returncode != 0, 'the drifted job succeeded:\n' + log[-5000:]
    assert 'Distributed training: True' in log and 'GPU number: 2' in log, log[-5000:]
    # the drift happened on rank 1 only, after the first step
    assert log.count('DriftOnRankHook: rank') == 1, log[-5000:]
    assert f'DriftOnRankHook: rank 1 nudged {DRIFTED} after iter 1' in log
    # ...and the check stopped the job there on each rank, naming the tensor and the rank
    for rank in (0, 1):  # torchrun prefixes each worker's traceback lines with [rankN]:
        assert (f'[rank{rank}]: convnext_dense.engine.hooks.ReplicaMismatchError: replicas out '
                f'of sync after iter 1: 1 of ') in log, log[-8000:]
        assert f'[rank{rank}]:   {DRIFTED} (ranks [1] differ from rank 0)' in log, log[-8000:]
    assert 'replicas in sync' not in log
    assert not list(work_dir.glob('**/*.pth'))  # it stopped before any checkpoint
