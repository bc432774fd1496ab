"""convnext_dense.utils: the umask read without changing it, atomic writes with the usual mode."""
from __future__ import annotations

import os
import stat
from collections.abc import Iterator

import pytest

from convnext_dense.utils import (
    _umask_from_probe_file,
    _umask_from_proc,
    atomic_file,
    current_umask,
    default_file_mode,
)


@pytest.fixture
def umask_027() -> Iterator[None]:
    """The process umask 027 for the test (not 022, the usual one), restored after it."""
    set_umask = os.umask
    previous = set_umask(0o027)
    yield
    set_umask(previous)


@pytest.fixture
def umask_unchangeable(umask_027, monkeypatch) -> None:
    """``os.umask`` fails: the code under test must not set the process umask, not even for a
    moment (another thread creating a file then would get mode 0o666)."""
    def refuse(mask: int) -> int:
        raise AssertionError(f'os.umask({mask:#o}) called: changes the whole process\'s umask')
    monkeypatch.setattr(os, 'umask', refuse)


def test_umask_and_modes_are_read_without_setting_the_umask(umask_unchangeable):
    assert current_umask() == 0o027
    assert default_file_mode() == 0o640 and default_file_mode(directory=True) == 0o750


def test_both_ways_of_reading_the_umask_agree(umask_027):
    assert _umask_from_proc() == 0o027  # Linux: /proc/self/status has a Umask line
    assert _umask_from_probe_file() == 0o027  # elsewhere: the mode a new file gets


def test_atomic_file_gets_the_mode_of_a_file_written_in_place(tmp_path, umask_unchangeable):
    target = tmp_path / 'report.md'
    with atomic_file(target) as f:
        f.write(b'done\n')
    assert target.read_bytes() == b'done\n'
    assert stat.S_IMODE(target.stat().st_mode) == 0o640  # not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ['report.md']
