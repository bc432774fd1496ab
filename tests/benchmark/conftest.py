"""Fixtures of the benchmark tests: mmpretrain missing, broken or fake, without touching the
install; and guards that keep mmpretrain and the overlay out of the pytest process."""
from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import pytest

from convnext_dense.benchmark.mmpretrain_env import default_overlay


def _mmpretrain_modules() -> set[str]:
    return {name for name in sys.modules if name == 'mmpretrain' or name.startswith('mmpretrain.')}


@pytest.fixture(autouse=True)
def _mmpretrain_stays_out_of_this_process() -> Iterator[None]:
    """After each test (and after monkeypatch has undone its changes): a (fake) mmpretrain the
    test imported is dropped, so no other test sees it; and the overlay was not activated here.

    Activating the overlay is for good (transformers hidden, sys.path changed): it belongs in
    subprocesses, never in the pytest process, whose other tests use transformers.
    """
    before = _mmpretrain_modules()
    yield
    for name in _mmpretrain_modules() - before:
        del sys.modules[name]
    assert str(default_overlay()) not in sys.path, 'a test activated the mmpretrain overlay here'
    assert 'transformers' not in sys.modules or sys.modules['transformers'] is not None, (
        'a test hid transformers in the pytest process')


def _forget_mmpretrain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop any imported mmpretrain (restored after the test), so that the next import is fresh."""
    for name in _mmpretrain_modules():
        monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def mmpretrain_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import mmpretrain`` raises ModuleNotFoundError for mmpretrain itself."""
    _forget_mmpretrain(monkeypatch)
    monkeypatch.setitem(sys.modules, 'mmpretrain', None)


@pytest.fixture
def fake_mmpretrain(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Put a fake ``mmpretrain`` package first on sys.path whose ``__init__`` runs the given
    code: ``raise TypeError(...)`` as a broken install does, or ``__version__ = ...`` (it has
    a ``models`` module with a ``ConvNeXt`` class) as a working one."""

    def install(init_code: str) -> None:
        package = tmp_path / 'fake_site' / 'mmpretrain'
        (package / 'models').mkdir(parents=True)
        (package / '__init__.py').write_text(init_code + '\n')
        (package / 'models' / '__init__.py').write_text('class ConvNeXt:\n    pass\n')
        _forget_mmpretrain(monkeypatch)
        monkeypatch.syspath_prepend(str(package.parent))

    return install


@pytest.fixture
def broken_mmpretrain(fake_mmpretrain) -> Callable[[str], None]:
    """:func:`fake_mmpretrain` for code that raises (a broken install)."""
    return fake_mmpretrain
