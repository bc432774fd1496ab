"""convnext_dense/stack.py: which OpenMMLab stack is installed, and what is missing."""
from __future__ import annotations

import configparser
import re
import subprocess
import warnings
from importlib import metadata

import pytest
from packaging.specifiers import SpecifierSet

from convnext_dense.stack import (
    STACKS,
    StackError,
    check_stack,
    current_stack,
    installed_providers,
)
from tests.conftest import REPO

UPSTREAM = {'mmengine': ['mmengine'], 'mmcv': ['mmcv'], 'mmdet': ['mmdet'],
            'mmseg': ['mmsegmentation']}
ONEDL = {'mmengine': ['onedl-mmengine'], 'mmcv': ['onedl-mmcv'], 'mmdet': ['onedl-mmdetection'],
         'mmseg': ['onedl-mmsegmentation']}


@pytest.mark.parametrize('providers, stack', [(UPSTREAM, 'upstream'), (ONEDL, 'onedl')])
def test_one_stack_is_recognised(providers, stack):
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert check_stack(providers, importable={}) == stack


def test_mmdet_and_mmseg_are_optional():
    providers = {**ONEDL, 'mmdet': [], 'mmseg': []}
    assert check_stack(providers, importable={'mmdet': False, 'mmseg': False}) == 'onedl'


def test_missing_mmcv_is_named_with_the_verified_versions():
    with pytest.raises(StackError) as info:
        check_stack({**ONEDL, 'mmcv': []}, importable={'mmcv': False})
    message = str(info.value)
    assert message.startswith('convnext_dense needs mmcv, which is not installed')
    assert 'tools/install_mmcv.py' in message
    for stack, modules in STACKS.items():
        line = ', '.join(f'{dist} {version}' for dist, version in modules.values())
        assert f'{stack}: {line} (pip install "convnext_dense[{stack}]")' in message
    assert isinstance(info.value, ImportError)


def test_a_module_without_a_known_distribution_that_imports_is_accepted():
    """A source checkout or a third build: importable, so not missing, and no stack."""
    assert check_stack({**UPSTREAM, 'mmcv': []}, importable={'mmcv': True}) == 'upstream'
    providers = {'mmengine': [], 'mmcv': [], 'mmdet': [], 'mmseg': []}
    assert check_stack(providers, importable={'mmengine': True, 'mmcv': True}) is None


def test_two_distributions_of_one_module_are_refused():
    with pytest.raises(StackError, match='mmcv: mmcv, onedl-mmcv. Uninstall one of each pair'):
        check_stack({**ONEDL, 'mmcv': ['mmcv', 'onedl-mmcv']}, importable={})


def test_a_mix_of_stacks_warns_and_names_each_module():
    with pytest.warns(UserWarning, match=r'different stacks.*mmengine from onedl-mmengine '
                                         r'\(onedl\), mmcv from mmcv \(upstream\)'):
        assert check_stack({**ONEDL, 'mmcv': ['mmcv']}, importable={}) is None


def test_the_installed_stack_is_read_from_metadata():
    """This environment has one stack; its distributions are what the metadata says."""
    providers = installed_providers()
    stack = check_stack()
    assert stack in STACKS
    for module, (dist, _) in STACKS[stack].items():
        if providers[module]:
            assert providers[module] == [dist]
            metadata.version(dist)
    assert current_stack('mmdet') == stack


def _requirements(text: str) -> dict[str, str]:
    """Requirement lines -> {normalised name: the rest (version specifiers)}."""
    found = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith('#'):
            name, rest = re.match(r'([A-Za-z0-9_.-]+)(.*)', line).groups()
            found[name.lower().replace('_', '-')] = rest
    return found


def test_the_requirements_leave_the_stack_to_the_extras():
    """pip does not count onedl-* as mmcv/mmengine/...: naming those in install_requires would
    install upstream beside a fork. Each stack's extra names its distributions, from the
    verified version."""
    config = configparser.ConfigParser()
    config.read(REPO / 'setup.cfg')
    openmmlab = {dist for modules in STACKS.values() for dist, _ in modules.values()}
    assert not openmmlab & set(_requirements(config['options']['install_requires']))
    extras = config['options.extras_require']
    for name, extra in extras.items():
        if name not in STACKS:
            assert not openmmlab & set(_requirements(extra)), name
    for stack, modules in STACKS.items():
        required = _requirements(extras[stack])
        for dist, version in modules.values():
            assert SpecifierSet(required[dist]).contains(version), (stack, dist, required[dist])


def _make_dry_run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(['make', '-n', '-B', '-C', str(REPO), *args], capture_output=True,
                          text=True, timeout=60)


@pytest.mark.parametrize('stack, venv, expected', [
    ('upstream', '.venv', ['"mmengine==0.10.7"', 'tools/install_mmcv.py --dist mmcv',
                           '-e ".[all,upstream]"', 'mmpretrain==1.2.0']),
    ('onedl', '.venv-onedl', ['"onedl-mmengine==0.10.12"',
                              'tools/install_mmcv.py --dist onedl-mmcv', '-e ".[all,onedl]"',
                              'onedl-mmpretrain==1.3.6']),
])
def test_make_setup_installs_the_chosen_stack_into_its_own_venv(stack, venv, expected):
    result = _make_dry_run('setup', f'STACK={stack}')
    assert result.returncode == 0, result.stderr
    for text in expected:
        assert text in result.stdout, text
    assert f'{venv}/bin/python tools/install_mmcv.py' in result.stdout
    if stack == 'onedl':
        assert 'mmpretrain==1.2.0' not in result.stdout


def test_make_refuses_an_unknown_stack():
    result = _make_dry_run('setup', 'STACK=openmmlab')
    assert result.returncode != 0
    assert 'STACK=openmmlab is not a stack; choose STACK=upstream or STACK=onedl' in result.stderr
