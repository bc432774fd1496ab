"""Reliability: a training run killed while running resumes where it was (tools/train.py)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from convnext_dense.checkpoint.safe_loading import mmengine_safe_globals
from convnext_dense.demo.data import make_coco_dataset
from tests.test_tools_e2e import REPO, coco_options, fewer_rois, run_tool_here


@pytest.mark.slow
def test_killed_training_resumes_with_its_counters_and_schedule(tmp_path):
    root = make_coco_dataset(tmp_path / 'coco', num_train=4, num_val=1, image_size=(96, 128))
    work_dir = tmp_path / 'work'
    options = coco_options(root, ['model.roi_head.bbox_head.num_classes',
                                  'model.roi_head.mask_head.num_classes'], augmentation='resize')
    options = [o for o in options if not o.startswith('train_cfg.max_epochs')] + [
        'train_cfg.max_epochs=2', 'train_dataloader.batch_size=1', 'model.backbone.arch=atto',
        'model.neck.in_channels=[40,80,160,320]'] + fewer_rois(cascade=False)
    args = [sys.executable, str(REPO / 'tools' / 'train.py'),
            'configs/mask_rcnn_convnext_t_coco.py', '--work-dir', str(work_dir),
            '--cfg-options', *options]
    with open(tmp_path / 'killed.log', 'w') as log:
        process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 600
        while not (work_dir / 'last_checkpoint').exists() and process.poll() is None:
            assert time.time() < deadline, 'no checkpoint within 10 minutes'
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait()
    assert process.returncode == -signal.SIGKILL, 'the run finished before it could be killed'
    assert not (work_dir / 'epoch_2.pth').exists()

    # resumed in this process (the killed run was a command line)
    result = run_tool_here('train.py', 'configs/mask_rcnn_convnext_t_coco.py', '--work-dir',
                           str(work_dir), '--resume', '--cfg-options', *options)
    resumed = result.stdout + result.stderr
    assert 'resumed epoch: 1, iter: 4' in resumed
    assert 'Epoch(train) [1]' not in resumed  # it did not start again
    # The warm-up continues: iteration k (from 0) trains at (0.001 + 0.999 k / 499) x 1e-4
    # (mmengine's LinearLR with end=500), 9.008e-7 at k=4; a restart would show 1e-7 again.
    assert 'Epoch(train) [2][1/4]  base_lr: 9.0080e-07' in resumed
    with torch.serialization.safe_globals(mmengine_safe_globals()):  # this process only
        final = torch.load(work_dir / 'epoch_2.pth', weights_only=True)
    assert (final['meta']['epoch'], final['meta']['iter']) == (2, 8)
    assert final['optimizer']['state']  # AdamW moments were carried over and kept updating
