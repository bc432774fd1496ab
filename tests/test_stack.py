"""convnext_dense/stack.py: which OpenMMLab stack is installed, and what is missing."""
from __future__ import annotations

import warnings
from importlib import metadata

import pytest

from convnext_dense.stack import (
    STACKS,
    StackError,
    check_stack,
    current_stack,
    installed_providers,
)

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
