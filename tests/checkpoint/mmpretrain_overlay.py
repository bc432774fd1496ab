"""Run a script with mmpretrain 1.2.0 importable, in a subprocess (tests only).

mmpretrain 1.2.0 cannot live in the project's environment (it fails to import next to
transformers 5, and mmdet imports it whenever it is installed), so ``make setup``
installs it into an overlay folder, ``<venv>/overlays/mmpretrain``. :func:`run_with_mmpretrain`
starts a subprocess from the repository root that puts that folder first on ``sys.path``,
hides ``transformers`` (as a module and as an installed distribution, which mmpretrain
checks too), checks that the overlay's mmpretrain is the one imported, then runs the
given script. mmdet and mmseg then build their own ConvNeXt configs
(``mmpretrain.ConvNeXt``) there as well.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

#: Where ``make setup`` installs mmpretrain and the runtime dependencies .venv lacks.
OVERLAY = Path(sys.prefix) / 'overlays' / 'mmpretrain'
MMPRETRAIN_VERSION = '1.2.0'

# Runs before the caller's script. argv: overlay, version, then the script's own arguments
# (the script sees them as sys.argv[1:]).
_PREAMBLE = r'''
import sys
overlay, version = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], *sys.argv[3:]]
import torch
from tests.conftest import randomize_  # this repository's tests, imported before the overlay
sys.path.insert(0, overlay)
# mmpretrain 1.2.0 breaks on transformers 5: hide it, as a module and as an installed
# distribution (mmpretrain's WITH_MULTIMODAL asks importlib_metadata, the overlay's copy)
sys.modules['transformers'] = None
import importlib_metadata
_distribution = importlib_metadata.distribution
def _no_transformers(name):
    if name.lower() == 'transformers':
        raise importlib_metadata.PackageNotFoundError(name)
    return _distribution(name)
importlib_metadata.distribution = _no_transformers
import mmpretrain
from mmpretrain.utils.dependency import WITH_MULTIMODAL
assert not WITH_MULTIMODAL and sys.modules.get('transformers') is None
assert mmpretrain.__file__.startswith(overlay), mmpretrain.__file__
assert mmpretrain.__version__ == version, mmpretrain.__version__
'''


def require_overlay() -> None:
    """Fail (not skip) the calling test when ``make setup`` has not built the overlay."""
    if not (OVERLAY / 'mmpretrain' / '__init__.py').is_file():
        pytest.fail(f'mmpretrain {MMPRETRAIN_VERSION} overlay not found at {OVERLAY}: run '
                    '`make setup` (it installs mmpretrain there, outside site-packages)',
                    pytrace=False)


def run_with_mmpretrain(script: str, *args: str, timeout: int = 300) -> None:
    """Run ``script`` (with ``args`` as its ``sys.argv[1:]``) where mmpretrain imports.

    The script may use ``torch``, ``randomize_`` and ``mmpretrain``, already imported.
    A failure of the subprocess fails the calling test with its output.
    """
    require_overlay()
    result = subprocess.run(
        [sys.executable, '-c', _PREAMBLE + script, str(OVERLAY), MMPRETRAIN_VERSION, *args],
        cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f'the script with the mmpretrain overlay {OVERLAY} failed (rerun `make setup` if the '
        'overlay is incomplete):\n' + (result.stdout + result.stderr)[-5000:])
