"""One training run per work_dir: a second trainer is refused, a killed run's lock is taken
over, a normal exit removes the lock file, only rank 0 takes it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from convnext_dense.apis.runner import build_runner, load_config
from convnext_dense.demo.data import make_ade20k_dataset
from convnext_dense.engine import work_dir_lock
from convnext_dense.engine.work_dir_lock import (
    LOCK_NAME,
    WorkDirBusyError,
    acquire_work_dir_lock,
    lock_work_dir_for_training,
)
from tests.conftest import REPO, run_tool_main
from tests.test_tools_e2e import ade_options

#: A process that takes a work_dir's lock, says so, then sleeps, exits or is killed. It
#: loads the lock module alone (it imports only mmengine): importing the package would
#: import mmdet and mmseg, ten times slower.
HOLDER = textwrap.dedent('''
    import importlib.util, os, signal, sys, time
    spec = importlib.util.spec_from_file_location('work_dir_lock', sys.argv[3])
    module = sys.modules['work_dir_lock'] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.acquire_work_dir_lock(sys.argv[1], command='holder-command')
    print('locked', flush=True)
    if sys.argv[2] == 'fork-kill':  # a child (a DataLoader worker) outlives the run
        child = os.fork()
        if child == 0:
            time.sleep(600)
            os._exit(0)
        print(child, flush=True)
    if sys.argv[2] in ('kill', 'fork-kill'):
        os.kill(os.getpid(), signal.SIGKILL)
    elif sys.argv[2] == 'sleep':
        time.sleep(600)
''')


def start_holder(work_dir: Path, then: str) -> subprocess.Popen:
    """Start a :data:`HOLDER` process and wait until it holds the lock (or ended)."""
    process = subprocess.Popen([sys.executable, '-c', HOLDER, str(work_dir), then,
                                work_dir_lock.__file__],
                               cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == 'locked\n', 'the holder did not take the lock'
    return process


@pytest.fixture(scope='module')
def busy_dir(tmp_path_factory):
    """A work_dir whose lock another live process holds; yields (work_dir, its pid)."""
    work_dir = tmp_path_factory.mktemp('busy')
    process = start_holder(work_dir, 'sleep')
    yield work_dir, process.pid
    process.kill()
    process.wait()


def test_a_second_run_is_refused_naming_the_first(busy_dir):
    work_dir, pid = busy_dir
    with pytest.raises(WorkDirBusyError) as error:
        acquire_work_dir_lock(work_dir)
    message = str(error.value)
    holder = json.loads((work_dir / LOCK_NAME).read_text())
    assert f'{work_dir} is in use by another training run (pid {pid} on host ' \
           f'{socket.gethostname()}, started {holder["started"]}: holder-command)' in message
    assert '--work-dir DIR' in message and '--resume' in message
    assert holder['pid'] == pid  # the refused run left the file alone


def test_build_runner_for_training_refuses_a_busy_work_dir(busy_dir):
    work_dir, pid = busy_dir
    cfg = load_config(str(REPO / 'configs' / 'upernet_convnext_t_ade20k_512.py'))
    cfg.work_dir = str(work_dir)
    with pytest.raises(WorkDirBusyError, match=f'pid {pid} '):
        build_runner(cfg, for_training=True)


def test_tools_train_stops_at_once_on_a_busy_work_dir(busy_dir, tmp_path):
    work_dir, pid = busy_dir
    root = make_ade20k_dataset(tmp_path / 'ade', num_train=1, num_val=1, image_size=(64, 64))
    # A run of two iterations on 64-pixel crops, should the lock ever let it start.
    result = run_tool_main('train', 'configs/upernet_convnext_t_ade20k_512.py',
                           '--work-dir', str(work_dir), '--cfg-options', *ade_options(root))
    assert result.returncode == 1
    assert result.stderr.startswith(f'error: {work_dir} is in use by another training run '
                                    f'(pid {pid} on host {socket.gethostname()}')
    assert os.listdir(work_dir) == [LOCK_NAME]  # no log folder, no config dump


@pytest.fixture
def logged(monkeypatch) -> list[str]:
    """The messages the lock module logs."""
    messages: list[str] = []
    monkeypatch.setattr(work_dir_lock, 'print_log', lambda msg, **kwargs: messages.append(msg))
    return messages


def test_the_lock_of_a_killed_run_is_taken_over(tmp_path, logged):
    killed = start_holder(tmp_path, 'kill')
    assert killed.wait() == -signal.SIGKILL
    left = json.loads((tmp_path / LOCK_NAME).read_text())
    assert left['pid'] == killed.pid  # the file outlived its run
    lock = acquire_work_dir_lock(tmp_path, command='resumed')
    try:
        assert len(logged) == 1
        assert 'taking over the lock file of a run that no longer holds it' in logged[0]
        assert f'pid {killed.pid} on host {left["host"]}, started {left["started"]}' in logged[0]
        now = json.loads((tmp_path / LOCK_NAME).read_text())
        assert (now['pid'], now['command']) == (os.getpid(), 'resumed')
    finally:
        lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_children_of_a_killed_run_do_not_keep_its_lock(tmp_path):
    # DataLoader workers are forked from the trainer; they notice its death only seconds
    # later. A lock that they inherit (flock's would be) would refuse the --resume run.
    killed = start_holder(tmp_path, 'fork-kill')
    child = int(killed.stdout.readline())
    try:
        assert killed.wait() == -signal.SIGKILL
        os.kill(child, 0)  # the child lives on
        acquire_work_dir_lock(tmp_path).release()
    finally:
        os.kill(child, signal.SIGKILL)


def test_a_normal_exit_removes_the_lock_file(tmp_path):
    finished = start_holder(tmp_path, 'exit')
    assert finished.wait() == 0
    assert not (tmp_path / LOCK_NAME).exists()


def test_the_holding_process_may_take_its_lock_again(tmp_path, logged):
    lock = acquire_work_dir_lock(tmp_path)
    try:
        assert acquire_work_dir_lock(tmp_path) is lock
        assert logged == []
    finally:
        lock.release()


@pytest.mark.parametrize('launcher, variable', [('pytorch', 'RANK'), ('slurm', 'SLURM_PROCID'),
                                                ('mpi', 'OMPI_COMM_WORLD_RANK')])
def test_only_rank_0_takes_the_lock(tmp_path, monkeypatch, launcher, variable):
    monkeypatch.setenv(variable, '1')
    assert lock_work_dir_for_training(tmp_path / 'rank1', launcher) is None
    assert not (tmp_path / 'rank1' / LOCK_NAME).exists()
    monkeypatch.setenv(variable, '0')
    lock = lock_work_dir_for_training(tmp_path / 'rank0', launcher)
    try:
        assert json.loads((tmp_path / 'rank0' / LOCK_NAME).read_text())['pid'] == os.getpid()
    finally:
        lock.release()
