"""Run a script with mmpretrain 1.2.0 importable, in a subprocess (tests only).

mmpretrain 1.2.0 cannot live in the project's environment (it fails to import next to
transformers 5, and mmdet imports it whenever it is installed), so ``make setup``
installs it into an overlay folder, ``<venv>/overlays/mmpretrain``. :func:`run_with_mmpretrain`
starts a subprocess from the repository root that activates that folder with the package's
:func:`~convnext_dense.benchmark.mmpretrain_env.activate_mmpretrain` (first on ``sys.path``;
mmpretrain imported with ``transformers`` hidden as a module and as an installed distribution,
which mmpretrain checks too), checks that the overlay's mmpretrain is the one imported, then
runs the given script.
mmdet and mmseg then build their own ConvNeXt configs (``mmpretrain.ConvNeXt``) there as well.
"""
from __future__ import annotations

import subprocess
import sys

import pytest

from convnext_dense.benchmark.mmpretrain_env import MMPRETRAIN_VERSION, default_overlay
from tests.conftest import REPO

#: Where ``make setup`` installs mmpretrain and the runtime dependencies .venv lacks.
OVERLAY = default_overlay()

# Runs before the caller's script. argv: overlay, version, then the script's own arguments
# (the script sees them as sys.argv[1:]). The overlay is activated by the package's own
# function, the one the benchmark uses (mmpretrain imported with transformers hidden).
_PREAMBLE = r'''
import sys
overlay, version = sys.argv[1], sys.argv[2]
sys.argv = [sys.argv[0], *sys.argv[3:]]
import torch
from tests.conftest import randomize_  # this repository's tests, imported before the overlay
from convnext_dense.benchmark.mmpretrain_env import activate_mmpretrain
status = activate_mmpretrain(overlay)
assert status.usable and status.overlay == overlay, status.describe()
assert status.version == version, status.describe()
import mmpretrain
from mmpretrain.utils.dependency import WITH_MULTIMODAL
assert not WITH_MULTIMODAL  # imported with transformers hidden: no multimodal models
'''


def require_overlay() -> None:
    """Fail (not skip) the calling test when ``make setup`` has not built the overlay."""
    if not (OVERLAY / 'mmpretrain' / '__init__.py').is_file():
        pytest.fail(f'mmpretrain {MMPRETRAIN_VERSION} overlay not found at {OVERLAY}: run '
                    '`make setup` (it installs mmpretrain there, outside site-packages)',
                    pytrace=False)


def run_with_mmpretrain(script: str, *args: str, timeout: int = 300) -> str:
    """Run ``script`` (with ``args`` as its ``sys.argv[1:]``) where mmpretrain imports; what
    it printed.

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
    return result.stdout
