"""Fixtures of the benchmark tests: mmpretrain missing or broken, without touching the install."""
from __future__ import annotations

import sys
from collections.abc import Callable

import pytest


def _forget_mmpretrain(monkeypatch: pytest.MonkeyPatch) -> None:
    """Drop any imported mmpretrain (restored after the test), so that the next import is fresh."""
    for name in list(sys.modules):
        if name == 'mmpretrain' or name.startswith('mmpretrain.'):
            monkeypatch.delitem(sys.modules, name)


@pytest.fixture
def mmpretrain_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import mmpretrain`` raises ModuleNotFoundError for mmpretrain itself."""
    _forget_mmpretrain(monkeypatch)
    monkeypatch.setitem(sys.modules, 'mmpretrain', None)


@pytest.fixture
def broken_mmpretrain(tmp_path, monkeypatch: pytest.MonkeyPatch) -> Callable[[str], None]:
    """Put a fake ``mmpretrain`` package first on sys.path whose ``__init__`` runs the given
    code (e.g. ``raise TypeError(...)``), as a broken install does."""

    def install(init_code: str) -> None:
        package = tmp_path / 'fake_site' / 'mmpretrain'
        package.mkdir(parents=True)
        (package / '__init__.py').write_text(init_code + '\n')
        _forget_mmpretrain(monkeypatch)
        monkeypatch.syspath_prepend(str(package.parent))

    return install
