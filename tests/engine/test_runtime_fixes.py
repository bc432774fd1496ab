"""The opt-in runtime fixes: off after a plain import, on by one switch, and what they do."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

#: Prints what a process has changed in mmengine and torch, as JSON.
PROBE = """
import json, torch
import mmengine.fileio.backends.local_backend as local_backend
import mmengine.runner, mmengine.runner.checkpoint as ckpt, mmengine.runner.runner as runner_mod
from mmengine.fileio.backends import LocalBackend
def allowed():  # torch's own modules allow-list their classes as they are imported
    return [repr(g) for g in torch.serialization.get_safe_globals()
            if not getattr(g[0] if isinstance(g, tuple) else g, '__module__', '').startswith(
                'torch')]
before = allowed()
{action}
from convnext_dense.engine.runtime_fixes import runtime_fixes_enabled
print(json.dumps(dict(
    safe_globals_added=[g for g in allowed() if g not in before],
    local_put_is_mmengines=LocalBackend.put.__module__ == local_backend.__name__,
    save_checkpoint_modules=sorted({{f.__module__ for f in (
        ckpt.save_checkpoint, mmengine.runner.save_checkpoint, runner_mod.save_checkpoint)}}),
    enabled=runtime_fixes_enabled())))
"""


def probe(action: str) -> dict:
    result = subprocess.run([sys.executable, '-c', PROBE.format(action=action)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_plain_import_changes_nothing_in_mmengine_or_torch():
    state = probe('import convnext_dense, mmdet.registry, mmseg.registry\n'
                  'from mmdet.registry import MODELS\n'
                  "MODELS.build(dict(type='ConvNeXt', arch='atto'))")
    assert state['safe_globals_added'] == []
    assert state['local_put_is_mmengines']
    assert state['save_checkpoint_modules'] == ['mmengine.runner.checkpoint']
    assert state['enabled'] == dict(safe_mmengine_checkpoints=False, atomic_checkpoints=False,
                                    config_formatted_once=False)


@pytest.mark.parametrize('switch', ['import convnext_dense.enable_fixes',
                                    'import convnext_dense; convnext_dense.enable_runtime_fixes();'
                                    ' convnext_dense.enable_runtime_fixes()'])
def test_the_switch_turns_on_its_three_fixes_and_only_for_checkpoints(switch):
    state = probe(switch)
    assert state['enabled'] == dict(safe_mmengine_checkpoints=True, atomic_checkpoints=True,
                                    config_formatted_once=True)
    assert any('HistoryBuffer' in g for g in state['safe_globals_added'])
    assert state['local_put_is_mmengines']  # other writes of mmengine are untouched
    assert state['save_checkpoint_modules'] == ['convnext_dense.engine.runtime_fixes']


def test_config_text_is_formatted_once_and_as_yapf_formats_it(monkeypatch):
    """With the fix, mmengine's pretty_text is yapf's text, and the same config's text again
    (log, dumps, checkpoint meta) is not formatted again."""
    import mmengine.config.config as config_module
    from mmengine import Config
    from yapf.yapflib import yapf_api

    from convnext_dense.engine import runtime_fixes
    monkeypatch.setattr(yapf_api, 'FormatCode', yapf_api.FormatCode)  # undone after the test
    monkeypatch.setattr(config_module, 'FormatCode', getattr(config_module, 'FormatCode', None),
                        raising=False)
    cfg = Config(dict(model=dict(type='ConvNeXt', depths=[3, 3, 9, 3], layer_scale=1e-6),
                      steps=[dict(name=f'step{i}', lr=0.1 * i) for i in range(20)]))
    expected = cfg.pretty_text
    calls = []
    original = yapf_api.FormatCode

    def counting(*args, **kwargs):
        calls.append(args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(yapf_api, 'FormatCode', counting)
    if getattr(config_module, 'FormatCode', None) is original:
        monkeypatch.setattr(config_module, 'FormatCode', counting)
    runtime_fixes.memoize_config_formatting()
    runtime_fixes.memoize_config_formatting()  # idempotent: wrapped once
    assert runtime_fixes.runtime_fixes_enabled()['config_formatted_once']
    assert [cfg.pretty_text for _ in range(3)] == [expected] * 3
    assert len(calls) == 1
    cfg.steps[0].lr = 5.0  # another text: formatted
    assert cfg.pretty_text != expected and len(calls) == 2
    # other callers of yapf pass through untouched
    assert yapf_api.FormatCode('x = [1,2]\n', style_config='pep8')[0] == 'x = [1, 2]\n'
    assert len(calls) == 3


def test_checkpoints_are_written_atomically_with_the_fixes_on(tmp_path, monkeypatch):
    from convnext_dense import enable_runtime_fixes
    enable_runtime_fixes()
    from mmengine.runner import save_checkpoint  # where CheckpointHook looks it up

    dst = tmp_path / 'epoch_1.pth'
    dst.write_bytes(b'previous checkpoint')

    def die(fd):
        raise OSError('killed while saving')

    with monkeypatch.context() as patch:
        patch.setattr(os, 'fsync', die)
        with pytest.raises(OSError, match='killed while saving'):
            save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(dst))
    assert dst.read_bytes() == b'previous checkpoint'
    assert [p.name for p in tmp_path.iterdir()] == ['epoch_1.pth']  # no temporary left
    save_checkpoint({'state_dict': {'w': torch.ones(3)}}, str(dst))
    assert torch.load(dst, weights_only=True)['state_dict']['w'].tolist() == [1.0] * 3
    assert dst.stat().st_mode & 0o644 == 0o644  # readable like any other file


def mmdet_train_script() -> Path:
    import mmdet
    script = Path(mmdet.__file__).parent / '.mim' / 'tools' / 'train.py'
    assert script.is_file(), f'mmdet wheel without its tools: {script}'
    return script


def user_config(tmp_path: Path, imports: list[str]) -> Path:
    """A user's config as mmdet's own train.py runs it: our config, CPU-sized, fp32."""
    config = tmp_path / f'user_{len(imports)}.py'
    config.write_text(
        f"_base_ = [{str(REPO / 'configs' / 'mask_rcnn_convnext_t_coco.py')!r}]\n"
        f'custom_imports = dict(imports={imports!r}, allow_failed_imports=False)\n'
        "optim_wrapper = dict(_delete_=True, type='OptimWrapper',\n"
        "    constructor='ConvNeXtLayerDecayOptimizerConstructor',\n"
        "    optimizer=dict(type='AdamW', lr=1e-4, weight_decay=0.05),\n"
        "    paramwise_cfg=dict(decay_rate=0.95, decay_type='layer_wise', num_layers=6))\n"
        "model = dict(backbone=dict(arch='atto'), neck=dict(in_channels=[40, 80, 160, 320]))\n")
    return config


@pytest.mark.slow
def test_switch_from_a_config_with_mmdets_own_train_py(tmp_path):
    from convnext_dense.demo.data import make_coco_dataset
    from tests.test_tools_e2e import coco_options, fewer_rois
    root = make_coco_dataset(tmp_path / 'coco', num_train=2, num_val=1, image_size=(96, 128))
    options = coco_options(root, ['model.roi_head.bbox_head.num_classes',
                                  'model.roi_head.mask_head.num_classes'],
                           augmentation='resize') + fewer_rois(cascade=False)
    options = [o for o in options if not o.startswith('train_cfg.max_epochs')] + [
        'train_dataloader.batch_size=1', 'val_cfg=None', 'val_dataloader=None',
        'val_evaluator=None']
    script = mmdet_train_script()

    def train(config: Path, work_dir: Path, epochs: int, *extra: str):
        return subprocess.run(
            [sys.executable, str(script), str(config), '--work-dir', str(work_dir), *extra,
             '--cfg-options', f'train_cfg.max_epochs={epochs}', *options],
            cwd=tmp_path, capture_output=True, text=True, timeout=900)

    with_switch = user_config(tmp_path, ['convnext_dense', 'convnext_dense.enable_fixes'])
    work = tmp_path / 'work'
    first = train(with_switch, work, 1)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert (work / 'epoch_1.pth').is_file()
    resumed = train(with_switch, work, 2, '--resume')
    log = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, log[-4000:]
    assert 'resumed epoch: 1, iter: 2' in log
    from convnext_dense.checkpoint.safe_loading import mmengine_safe_globals
    with torch.serialization.safe_globals(mmengine_safe_globals()):  # this process only
        assert torch.load(work / 'epoch_2.pth', weights_only=True)['meta']['epoch'] == 2

    # Without the switch, mmengine 0.10 cannot resume under torch >= 2.6's safe loading.
    without = user_config(tmp_path, ['convnext_dense'])
    failed = train(without, work, 3, '--resume')
    assert failed.returncode != 0
    assert 'Weights only load failed' in failed.stdout + failed.stderr


def test_config_scope_fix_points_a_missing_distribution_at_its_module():
    """The fork's table names ``mmsegmentation``, a distribution it does not have."""
    from convnext_dense.engine.runtime_fixes import fix_config_scope_packages
    table = {'mmdet': 'mmdet', 'mmseg': 'no-such-distribution', 'mmocr': 'mmocr'}
    assert fix_config_scope_packages(table) == {'mmseg': 'no-such-distribution'}
    assert table == {'mmdet': 'mmdet', 'mmseg': 'mmseg', 'mmocr': 'mmocr'}
    assert fix_config_scope_packages(table) == {}  # idempotent
    # a module that does not import keeps its entry: mmengine's "not installed" error stays
    table = {'no_such_module': 'no-such-distribution'}
    assert fix_config_scope_packages(table, scopes=('no_such_module',)) == {}
    assert table == {'no_such_module': 'no-such-distribution'}


def test_config_scope_fix_changes_nothing_where_the_distribution_is_installed():
    from importlib import metadata

    from convnext_dense.engine.runtime_fixes import fix_config_scope_packages
    from convnext_dense.stack import current_stack
    installed = {'upstream': 'mmsegmentation', 'onedl': 'onedl-mmsegmentation'}
    dist = installed[current_stack('mmseg')]
    metadata.distribution(dist)
    table = {'mmseg': dist}
    assert fix_config_scope_packages(table) == {} and table == {'mmseg': dist}


def test_mmseg_bases_load_with_the_forks_table(tmp_path, monkeypatch):
    """The fork's failure, reproduced on either stack: the table names a distribution that is
    not installed. Without the fix mmengine refuses the ``mmseg::`` base; with it, it loads."""
    from mmengine.config import Config
    from mmengine.config.utils import MODULE2PACKAGE

    from convnext_dense.engine.runtime_fixes import fix_config_scope_packages
    config = tmp_path / 'user.py'
    config.write_text("_base_ = ['mmseg::_base_/models/upernet_r50.py']\n")
    monkeypatch.setitem(MODULE2PACKAGE, 'mmseg', 'mmsegmentation-not-installed')
    with pytest.raises(Exception, match='mmsegmentation-not-installed is not installed'):
        Config.fromfile(config)
    assert fix_config_scope_packages() == {'mmseg': 'mmsegmentation-not-installed'}
    assert Config.fromfile(config).model.decode_head.type == 'UPerHead'


def test_import_applies_the_config_scope_fix():
    code = ('from mmengine.config.utils import MODULE2PACKAGE as t\n'
            "t['mmseg'] = 'mmsegmentation-not-installed'\n"
            "import convnext_dense\nprint(t['mmseg'], t['mmdet'])")
    result = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ['mmseg', 'mmdet']
