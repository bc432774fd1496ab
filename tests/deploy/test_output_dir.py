"""The export's output folder: only an earlier export is replaced, by rename, checked twice.

One real export of the UperNet demo (atto) is traced; the refusals happen before any trace,
and the check at the swap is exercised on :func:`swap_in` with real export folders.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from convnext_dense.deploy.export import (
    DEPLOY_FILE,
    EXPORT_FILES,
    ONNX_FILE,
    export_onnx,
    is_previous_export,
)
from convnext_dense.deploy.output_dir import make_staging_dir, swap_in
from tests.conftest import load_tool, run_tool_main

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / 'configs/demo/upernet_convnext_demo.py')


def process_umask() -> int:
    """The umask, read without changing it."""
    for line in Path('/proc/self/status').read_text().splitlines():
        if line.startswith('Umask:'):
            return int(line.split()[1], 8)
    raise AssertionError('no Umask line in /proc/self/status')


@pytest.fixture(scope='module')
def earlier_export(tmp_path_factory) -> Path:
    """A real export, traced once for this module."""
    return export_onnx(SEG_DEMO, None, tmp_path_factory.mktemp('export') / 'onnx').parent


def copy_export(export: Path, dst: Path) -> Path:
    shutil.copytree(export, dst)
    return dst


def hidden_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith('.')]


def test_a_training_folder_is_refused_even_with_force(tmp_path):
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    (work_dir / 'epoch_1.pth').write_bytes(b'weights')
    (work_dir / 'last_checkpoint').write_text('epoch_1.pth')
    for force in (False, True):
        with pytest.raises(FileExistsError, match=re.escape(
                f'{work_dir} holds files that are not an earlier export (epoch_1.pth, '
                'last_checkpoint); give a new or empty folder: --force replaces only an '
                'earlier export (end2end.onnx + deploy.json), never other files')):
            export_onnx(SEG_DEMO, None, work_dir, force=force)
    assert sorted(p.name for p in work_dir.iterdir()) == ['epoch_1.pth', 'last_checkpoint']
    assert (work_dir / 'epoch_1.pth').read_bytes() == b'weights'
    assert [p.name for p in tmp_path.iterdir()] == ['work']  # no staging folder left


def test_export_files_are_recognised_exactly(tmp_path, earlier_export):
    assert is_previous_export(earlier_export)
    extra = copy_export(earlier_export, tmp_path / 'extra')
    (extra / 'notes.txt').write_text('mine')
    not_deploy = copy_export(earlier_export, tmp_path / 'not_deploy')
    (not_deploy / DEPLOY_FILE).write_text(json.dumps({'task': 'detection'}))
    missing = copy_export(earlier_export, tmp_path / 'missing')
    (missing / DEPLOY_FILE).unlink()
    for folder in (extra, not_deploy, missing):
        assert not is_previous_export(folder), folder.name


def test_an_earlier_export_is_replaced_only_with_force(tmp_path, earlier_export, monkeypatch):
    out = copy_export(earlier_export, tmp_path / 'onnx')
    old_onnx = (out / ONNX_FILE).read_bytes()
    result = run_tool_main('export', SEG_DEMO, 'x.pth', '--out-dir', str(out))
    assert result.returncode == 1
    assert f'{out} holds an earlier export (deploy.json, end2end.onnx); pass --force to ' \
           'replace it' in result.stderr
    assert (out / ONNX_FILE).read_bytes() == old_onnx

    def no_umask(mask):  # the export must not change the process umask, not even for a moment
        raise AssertionError(f'os.umask({mask:#o}) called')

    umask = process_umask()
    monkeypatch.setattr(os, 'umask', no_umask)
    export_onnx(SEG_DEMO, None, out, dynamic=False, force=True)
    assert json.loads((out / DEPLOY_FILE).read_text())['dynamic'] is False
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORT_FILES)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # as a folder made by mkdir
    assert [p.name for p in tmp_path.iterdir()] == ['onnx']  # old export and staging gone


def test_the_folder_is_checked_again_at_the_swap(tmp_path, earlier_export):
    """Another export (or the user) wrote the folder while this export traced."""
    out = tmp_path / 'onnx'
    staging = make_staging_dir(out)  # this export's finished output
    for name in EXPORT_FILES:
        shutil.copy(earlier_export / name, staging / name)

    copy_export(earlier_export, out)  # another run's export appeared: refused without force
    with pytest.raises(FileExistsError, match='holds an earlier export'):
        swap_in(staging, out, False, is_previous_export, 'export', EXPORT_FILES)
    (out / 'notes.txt').write_text('mine')  # the user's file: refused even with force
    with pytest.raises(FileExistsError, match='holds files that are not an earlier export'):
        swap_in(staging, out, True, is_previous_export, 'export', EXPORT_FILES)
    assert (out / 'notes.txt').read_text() == 'mine'
    (out / 'notes.txt').unlink()
    (staging / DEPLOY_FILE).write_text((staging / DEPLOY_FILE).read_text().replace(
        '"task"', '"new": true, "task"'))
    swap_in(staging, out, True, is_previous_export, 'export', EXPORT_FILES)
    assert json.loads((out / DEPLOY_FILE).read_text())['new'] is True
    assert not staging.exists() and hidden_leftovers(tmp_path) == []


def test_one_option_name_for_the_output_folder():
    export = load_tool('export')
    for option in ('--out-dir', '--out'):
        assert export.parse_args([SEG_DEMO, 'x.pth', option, 'd']).out_dir == 'd'
    infer = load_tool('infer')
    for option in ('--out-dir', '--out'):
        assert infer.parse_args([SEG_DEMO, 'x.pth', 'img.jpg', option, 'd']).out_dir == 'd'


def test_the_swap_deletes_only_the_files_an_export_writes(tmp_path, earlier_export):
    """A file written into the old folder after it was checked (here: a check that misses it)
    is kept, in the folder renamed aside, not deleted with the old export."""
    out = copy_export(earlier_export, tmp_path / 'onnx')
    (out / 'late.txt').write_text('written during the swap')
    staging = make_staging_dir(out)
    for name in EXPORT_FILES:
        shutil.copy(earlier_export / name, staging / name)
    swap_in(staging, out, True, lambda folder: True, 'export', EXPORT_FILES)
    assert sorted(p.name for p in out.iterdir()) == sorted(EXPORT_FILES)
    (aside,) = [p for p in tmp_path.iterdir() if p.name.endswith('.replaced')]
    assert [p.name for p in aside.iterdir()] == ['late.txt']
