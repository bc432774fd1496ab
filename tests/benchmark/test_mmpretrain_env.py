"""Finding mmpretrain: installed (a fake package here), from the overlay (the real mmpretrain
1.2.0 that ``make setup`` puts there, in a subprocess), or unusable with a clear reason.

The overlay is never activated in this process (tests/benchmark/conftest.py checks that after
each test): it makes mmpretrain visible to everything in the process, for good.
"""
from __future__ import annotations

import configparser
import importlib.util
import re
import subprocess
import sys

import pytest

from convnext_dense.benchmark.mmpretrain_env import (
    MMPRETRAIN_VERSION,
    MMPRETRAIN_VERSIONS,
    MMPretrainStatus,
    activate_mmpretrain,
    default_overlay,
)
from tests.checkpoint.mmpretrain_overlay import require_overlay
from tests.conftest import REPO

OVERLAY = default_overlay()


@pytest.fixture
def not_installed(monkeypatch):
    """mmpretrain not installed in site-packages, whatever this environment holds."""
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'mmpretrain' else find_spec(name, *a))


def test_installed_mmpretrain_is_used_as_it_is(fake_mmpretrain, tmp_path):
    fake_mmpretrain("__version__ = '9.9.9'")
    path_before = list(sys.path)
    transformers_before = sys.modules.get('transformers', 'absent')
    status = activate_mmpretrain(tmp_path / 'no-overlay')
    assert status == MMPretrainStatus(True, version='9.9.9')
    assert status.usable and status.describe() == 'mmpretrain 9.9.9 (installed)'
    assert sys.path == path_before  # the installed one needs nothing added
    # transformers was hidden during the import only
    assert sys.modules.get('transformers', 'absent') is transformers_before
    assert activate_mmpretrain(tmp_path / 'no-overlay') == status  # imported already


def test_transformers_is_hidden_only_while_mmpretrain_imports(fake_mmpretrain, tmp_path):
    fake_mmpretrain("import sys\n"
                    "assert sys.modules['transformers'] is None, 'transformers visible'\n"
                    "__version__ = '9.9.9'")
    assert activate_mmpretrain(tmp_path / 'no-overlay').usable


def test_no_mmpretrain_and_no_overlay_says_where_it_looked(not_installed, tmp_path):
    path_before = list(sys.path)
    status = activate_mmpretrain(tmp_path / 'absent')
    assert (status.installed, status.usable) == (False, False)
    assert status.describe() == (
        f'mmpretrain: not installed; no overlay at {tmp_path / "absent"} '
        f'(`make setup` installs mmpretrain {MMPRETRAIN_VERSION} there)')
    assert sys.path == path_before


def test_without_the_overlay_only_the_installed_one_is_tried(not_installed):
    assert activate_mmpretrain(use_overlay=False) == MMPretrainStatus(installed=False)


def test_a_broken_install_with_no_overlay_names_both(broken_mmpretrain, tmp_path):
    broken_mmpretrain("raise TypeError('NoneType takes no arguments')")
    status = activate_mmpretrain(tmp_path / 'absent')
    assert not status.usable
    assert status.describe() == (
        'mmpretrain is installed but fails to import: TypeError: NoneType takes no arguments; '
        f'no overlay at {tmp_path / "absent"} (`make setup` installs mmpretrain '
        f'{MMPRETRAIN_VERSION} there)')
    assert 'mmpretrain' not in sys.modules  # what the failed import left is dropped


def test_an_overlay_whose_mmpretrain_fails_is_reported_and_left_off_sys_path(not_installed,
                                                                              tmp_path):
    package = tmp_path / 'overlay' / 'mmpretrain'
    package.mkdir(parents=True)
    (package / '__init__.py').write_text("raise ImportError('half an install')\n")
    status = activate_mmpretrain(tmp_path / 'overlay')
    assert not status.usable
    assert status.describe() == ('mmpretrain is installed but fails to import: ImportError: '
                                 f'half an install; imported from the overlay {tmp_path}/overlay')
    assert str(tmp_path / 'overlay') not in sys.path


# Run in a fresh interpreter from the repository root. argv: overlay.
_OVERLAY_SCRIPT = r'''
import json, sys
import convnext_dense  # imports transformers (mmengine's optimizer registry) before activation
assert sys.modules.get('transformers') is not None
from convnext_dense.benchmark.baselines import mmpretrain_status
status = mmpretrain_status(sys.argv[1])
again = mmpretrain_status(sys.argv[1])
import importlib_metadata
import mmdet.models  # imports mmpretrain where it is importable: it must find this one
from mmdet.models.data_preprocessors import reid_data_preprocessor
from mmdet.registry import MODELS
from mmengine.registry import DefaultScope
from mmpretrain.utils.dependency import WITH_MULTIMODAL
with DefaultScope.overwrite_default_scope('mmdet'):
    backbone = MODELS.build(dict(type='mmpretrain.ConvNeXt', arch='atto', out_indices=[0, 3],
                                 gap_before_final_norm=False))
print(json.dumps(dict(
    describe=status.describe(), same=again == status, usable=status.usable,
    multimodal=WITH_MULTIMODAL,
    transformers_back=type(sys.modules.get('transformers')).__name__,
    transformers_distribution=importlib_metadata.distribution('transformers').version,
    mmdet_sees=reid_data_preprocessor.mmpretrain.__file__,
    backbone=type(backbone).__module__)))
'''


def test_the_overlay_makes_mmpretrain_importable_next_to_transformers_5():
    require_overlay()
    result = subprocess.run([sys.executable, '-c', _OVERLAY_SCRIPT, str(OVERLAY)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    import json
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found['describe'] == f'mmpretrain {MMPRETRAIN_VERSION} (overlay {OVERLAY})'
    assert found['same'] and found['usable']
    # imported without its multimodal models; transformers back as it was, module and
    # distribution, for the rest of the process
    assert found['multimodal'] is False
    assert found['transformers_back'] != 'NoneType'
    assert found['transformers_distribution'].startswith('5.')
    assert found['mmdet_sees'].startswith(str(OVERLAY))
    assert found['backbone'].startswith('mmpretrain.')


def _requirement_names(lines: list[str]) -> set[str]:
    return {re.split(r'[<>=!~ ;\[]', line.strip(), maxsplit=1)[0].lower().replace('_', '-')
            for line in lines if line.strip() and not line.strip().startswith('#')}


def test_the_benchmark_extra_names_what_the_overlay_installs():
    """``pip install .[benchmark]`` gets what ``make setup`` puts in the overlay; the extra is
    not part of ``all`` (it conflicts with the ``tests`` extra's transformers)."""
    config = configparser.ConfigParser()
    config.read(REPO / 'setup.cfg')
    extras = config['options.extras_require']
    benchmark = _requirement_names(extras['benchmark'].splitlines())
    makefile = (REPO / 'Makefile').read_text()
    command = re.search(r'--target \$\(MMPRETRAIN_OVERLAY\) (.*?)\n\s*#', makefile, re.S)
    overlay = _requirement_names(command.group(1).replace('\\', ' ').split())
    assert benchmark == overlay
    assert f"mmpretrain=={MMPRETRAIN_VERSIONS['upstream']}" in extras['benchmark']
    assert 'mmpretrain' not in _requirement_names(extras['all'].splitlines())
    assert 'transformers' in _requirement_names(extras['tests'].splitlines())
