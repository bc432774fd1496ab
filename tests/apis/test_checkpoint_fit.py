"""A checkpoint that does not fit the config: tools/test.py refuses it, training warns.

The real tools' main() and mmengine Runner on the UperNet demo config (ConvNeXt-atto) and a
tiny generated ADE20K folder; the misfit is a checkpoint of the same model with 4 classes
instead of the config's 6.
"""
from __future__ import annotations

import ast
import re
import uuid
from pathlib import Path

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import checkpoint_misfit, load_config, prepare_test_cfg
from convnext_dense.checkpoint.errors import CheckpointError
from convnext_dense.demo.data import make_ade20k_dataset
from tests.conftest import run_tool_main

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / 'configs/demo/upernet_convnext_demo.py')
MISFIT = ("does not fit the config's model (EncoderDecoder): number of classes: the config "
          'has 6 classes, the checkpoint 4')


def save_checkpoint(path: Path, num_classes: int | None = None) -> Path:
    cfg = Config.fromfile(SEG_DEMO)
    if num_classes is not None:
        cfg.model.decode_head.num_classes = num_classes
        cfg.model.auxiliary_head.num_classes = num_classes
    torch.manual_seed(0)
    torch.save({'state_dict': build_model(cfg).state_dict(), 'meta': {}}, path)
    return path


@pytest.fixture(scope='module')
def setup(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp('fit')
    root = make_ade20k_dataset(folder / 'ade', num_train=2, num_val=1, image_size=(64, 96))
    options = [f'{loader}.dataset.data_root={root}' for loader in
               ('train_dataloader', 'val_dataloader', 'test_dataloader')]
    options += [f'{loader}.{key}' for loader in ('train_dataloader', 'val_dataloader',
                                                  'test_dataloader')
                for key in ('num_workers=0', 'persistent_workers=False')]
    return dict(folder=folder, options=options, root=str(root),
                fits=save_checkpoint(folder / 'fits.pth'),
                misfit=save_checkpoint(folder / 'four_classes.pth', num_classes=4))


def test_test_tool_refuses_a_checkpoint_of_another_class_count(tmp_path, setup):
    result = run_tool_main('test', SEG_DEMO, str(setup['misfit']), '--work-dir',
                           str(tmp_path / 'refused'), '--cfg-options', *setup['options'])
    assert result.returncode == 1
    assert result.stderr.startswith(f'error: {setup["misfit"]} {MISFIT}')
    assert 'decode_head.conv_seg.weight: checkpoint (4, 128, 1, 1) vs config (6, 128, 1, 1)' \
        in result.stderr
    assert 'Traceback' not in result.stderr and result.stdout == ''  # nothing evaluated
    with pytest.raises(CheckpointError, match=re.escape(MISFIT)):  # --tta: the model inside
        prepare_test_cfg(SEG_DEMO, str(setup['misfit']), str(tmp_path / 'tta'), tta=True,
                         cfg_options={'test_dataloader.dataset.data_root': setup['root']})

    # the checkpoint that fits is evaluated as before
    result = run_tool_main('test', SEG_DEMO, str(setup['fits']), '--work-dir',
                           str(tmp_path / 'fits'), '--cfg-options', *setup['options'])
    assert result.returncode == 0, result.stderr
    assert 'mIoU' in ast.literal_eval(result.stdout.strip().splitlines()[-1])


def test_training_from_a_misfit_load_from_warns_and_trains(tmp_path, setup):
    log_file = tmp_path / 'before_runner.log'  # the logger current until the runner's own
    MMLogger.get_instance(f'fit_{uuid.uuid4().hex}', log_file=str(log_file))
    work_dir = tmp_path / 'work'
    result = run_tool_main(
        'train', SEG_DEMO, '--work-dir', str(work_dir), '--cfg-options', *setup['options'],
        f'load_from={setup["misfit"]}', 'train_dataloader.batch_size=2', 'train_cfg.max_iters=1',
        'train_cfg.val_interval=10', 'default_hooks.checkpoint.interval=1')
    assert result.returncode == 0, result.stderr
    log = log_file.read_text()
    assert f'WARNING - load_from: {setup["misfit"]} {MISFIT}' in log
    assert "Training goes on: the weights that fit are loaded (mmengine's load_from is not " \
        'strict)' in log
    assert (work_dir / 'iter_1.pth').is_file()


def test_the_check_leaves_the_config_as_the_runner_builds_it(tmp_path):
    """DINO's detector writes into its bbox_head config when built: the check builds a copy,
    so the runner can still build the config's model."""
    cfg = load_config(str(REPO / 'configs/dino_4scale_convnext_t_coco.py'))
    before = cfg.model.to_dict()
    empty = tmp_path / 'empty.pth'
    torch.save({'state_dict': {}}, empty)
    assert 'missing' in checkpoint_misfit(cfg, str(empty))
    assert cfg.model.to_dict() == before
    with torch.device('meta'):
        build_model(cfg)
