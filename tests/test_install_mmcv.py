"""tools/install_mmcv.py: cache key, C++ standard patch, verification of the ops."""
from __future__ import annotations

import re
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
import torch

from tests.conftest import load_tool


@pytest.fixture(scope='module')
def installer():
    return load_tool('install_mmcv')


def fake_torch(monkeypatch, tmp_path, cuda: str | None, gpu: bool, nvcc: bool | None) -> None:
    """Set the installer's inputs: torch's CUDA build, a visible GPU, the CUDA toolchain.

    ``nvcc``: None leaves CUDA_HOME unset; False gives a CUDA_HOME without nvcc.
    """
    from torch.utils import cpp_extension
    monkeypatch.setattr(torch.version, 'cuda', cuda)
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpu)
    cuda_home = None
    if nvcc is not None:
        cuda_home = tmp_path / 'cuda'
        (cuda_home / 'bin').mkdir(parents=True)
        if nvcc:
            (cuda_home / 'bin' / 'nvcc').write_text('#!/bin/sh\n')
            (cuda_home / 'bin' / 'nvcc').chmod(0o755)
        cuda_home = str(cuda_home)
    monkeypatch.setattr(cpp_extension, 'CUDA_HOME', cuda_home)


@pytest.mark.parametrize('cuda, gpu, nvcc, flavour, message', [
    ('12.8', True, True, 'cu128', 'CUDA ops: torch (CUDA 12.8) sees a GPU and nvcc is in'),
    ('12.8', True, None, 'cpu', 'WARNING: CPU-only ops although a GPU is visible: torch '
                                '(CUDA 12.8) sees a GPU, but no CUDA toolchain was found '
                                '(CUDA_HOME is not set'),
    ('12.8', True, False, 'cpu', 'WARNING: CPU-only ops although a GPU is visible: torch '
                                 '(CUDA 12.8) sees a GPU, but there is no nvcc in CUDA_HOME='),
    ('12.8', False, True, 'cpu', 'CPU ops: torch (CUDA 12.8) sees no GPU'),
    (None, False, None, 'cpu', 'CPU ops: torch '),
], ids=['gpu-nvcc', 'gpu-no-cuda-home', 'gpu-no-nvcc', 'cuda-torch-no-gpu', 'cpu-torch'])
def test_cache_key_and_ops_follow_gpu_and_toolchain(installer, monkeypatch, tmp_path, capsys,
                                                     cuda, gpu, nvcc, flavour, message):
    monkeypatch.setenv('CONVNEXT_DENSE_CACHE', str(tmp_path / 'cache'))
    fake_torch(monkeypatch, tmp_path, cuda, gpu, nvcc)
    torch_version = torch.__version__.split('+')[0]
    py = f'py{sys.version_info.major}{sys.version_info.minor}'
    assert installer.cache_dir('2.1.0') == (
        tmp_path / 'cache' / 'wheels' / f'mmcv-2.1.0_torch-{torch_version}_{flavour}_{py}')
    assert installer.cache_dir('2.3.6', 'onedl-mmcv') == (
        tmp_path / 'cache' / 'wheels' / f'onedl-mmcv-2.3.6_torch-{torch_version}_{flavour}_{py}')
    # the flag that build_wheel (FORCE_CUDA) and verify (CUDA kernels) use
    assert installer.torch_info() == (torch_version, cuda, flavour != 'cpu')
    installer.log_ops_choice()
    out = capsys.readouterr().out
    assert out.startswith('[install_mmcv] ' + message), out
    if flavour == 'cpu' and gpu:
        assert 'will fail' in out and '--force-build' in out


def test_install_says_why_a_gpu_machine_gets_cpu_ops(installer, monkeypatch, tmp_path, capsys):
    """The fallback is printed by the installer's entry point, before anything else."""
    fake_torch(monkeypatch, tmp_path, '12.8', gpu=True, nvcc=None)
    monkeypatch.setattr(installer, 'verify', lambda version, quiet=False, dist='mmcv': True)
    monkeypatch.setattr(installer, 'module_distributions', lambda module: [module])
    installer.install('2.1.0')
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('[install_mmcv] WARNING: CPU-only ops although a GPU is visible')
    assert lines[1:] == ['[install_mmcv] mmcv distribution: mmcv 2.1.0',
                         '[install_mmcv] already installed, nothing to do']


def test_cxx_standard_patch(installer, tmp_path):
    (tmp_path / 'setup.py').write_text(
        "extra = ['-std=c++14']\nflags = ['-std=c++17', '-O3']\nkeep = '-std=c++20'\n")
    installer.patch_cxx_standard(tmp_path)
    text = (tmp_path / 'setup.py').read_text()
    assert '-std=c++14' not in text and '-std=c++17' not in text
    assert text.count('-std=c++20') == 3 and "'-O3'" in text


def test_installed_mmcv_ops_verify(installer):
    import mmcv

    from convnext_dense.stack import installed_providers
    dist, = installed_providers(('mmcv',))['mmcv']  # mmcv or onedl-mmcv
    assert installer.verify(mmcv.__version__, dist=dist)
    assert not installer.verify('0.0.0', quiet=True, dist=dist)  # a version mismatch fails
    other, = set(installer.DISTRIBUTIONS) - {dist}  # the module is not the other's
    assert not installer.verify(mmcv.__version__, quiet=True, dist=other)


def test_failed_command_raises_a_clear_error(installer):
    with pytest.raises(installer.InstallError, match='exit code 3'):
        installer.run([sys.executable, '-c', 'raise SystemExit(3)'])


def test_sdist_option_rejects_a_missing_or_foreign_file(installer, tmp_path, monkeypatch,
                                                        capsys):
    monkeypatch.setattr(sys, 'argv', ['install_mmcv.py', '--sdist', str(tmp_path / 'none.tgz')])
    with pytest.raises(SystemExit):
        installer.main()
    err = capsys.readouterr().err
    assert '--sdist' in err and 'no such file' in err
    other = tmp_path / 'mmcv-2.2.0.tar.gz'
    other.write_bytes(b'')
    with pytest.raises(installer.InstallError, match='not the source distribution of mmcv 2.1.0'):
        installer.build_wheel('2.1.0', tmp_path / 'wheels', other)


@pytest.mark.parametrize('requested, mmcv, mmengine, chosen', [
    (None, [], [], 'mmcv'),
    (None, [], ['mmengine'], 'mmcv'),
    (None, [], ['onedl-mmengine'], 'onedl-mmcv'),
    (None, ['onedl-mmcv'], ['mmengine'], 'onedl-mmcv'),  # what provides mmcv wins
    ('onedl-mmcv', [], ['mmengine'], 'onedl-mmcv'),
    ('onedl-mmcv', ['onedl-mmcv'], ['onedl-mmengine'], 'onedl-mmcv'),
    ('mmcv', ['mmcv'], [], 'mmcv'),
])
def test_choose_distribution(installer, requested, mmcv, mmengine, chosen):
    assert installer.choose_distribution(requested, mmcv, mmengine) == chosen


@pytest.mark.parametrize('requested, mmcv, message', [
    ('mmcv', ['onedl-mmcv'], 'onedl-mmcv already provides the mmcv module in this environment; '
                             'installing mmcv would overwrite its files'),
    ('onedl-mmcv', ['mmcv'], 'mmcv already provides the mmcv module in this environment; '
                             'installing onedl-mmcv would overwrite its files'),
    (None, ['mmcv-lite'], 'provided by mmcv-lite; this script builds only mmcv or onedl-mmcv'),
    ('mmcv', ['mmcv', 'onedl-mmcv'], 'provided by mmcv, onedl-mmcv'),
    ('mmcv-full', [], "--dist 'mmcv-full' is not supported; choose one of mmcv, onedl-mmcv"),
])
def test_another_distribution_is_never_replaced(installer, requested, mmcv, message):
    with pytest.raises(installer.InstallError, match=re.escape(message)):
        installer.choose_distribution(requested, mmcv, [])


def test_install_refuses_before_running_pip_over_the_other_distribution(installer, monkeypatch):
    ran = []
    monkeypatch.setattr(installer, 'module_distributions',
                        lambda module: {'mmcv': ['onedl-mmcv']}.get(module, []))
    monkeypatch.setattr(installer, 'run', lambda cmd, **kw: ran.append(cmd))
    monkeypatch.setattr(installer, 'verify', lambda *a, **kw: pytest.fail('verify ran'))
    with pytest.raises(installer.InstallError, match='onedl-mmcv already provides'):
        installer.install(dist='mmcv')
    assert ran == []


def test_install_uses_the_cached_wheel_of_its_own_distribution(installer, monkeypatch, tmp_path,
                                                               capsys):
    """Each distribution has its own cache key; the fork's default version is 2.3.6."""
    monkeypatch.setenv('CONVNEXT_DENSE_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(installer, 'module_distributions',
                        lambda module: {'mmengine': ['onedl-mmengine']}.get(module, []))
    for dist, version in installer.DISTRIBUTIONS.items():
        folder = installer.cache_dir(version, dist)
        folder.mkdir(parents=True)
        (folder / f'{dist.replace("-", "_")}-{version}-cp311-cp311-linux_x86_64.whl').touch()
    checks = []

    def verify(version, quiet=False, dist='mmcv'):
        checks.append((version, dist))
        return len(checks) > 1  # not installed yet, then working
    monkeypatch.setattr(installer, 'verify', verify)
    ran = []
    monkeypatch.setattr(installer, 'run', lambda cmd, **kw: ran.append(cmd))
    installer.install()  # no --dist: onedl-mmengine is installed, so onedl-mmcv
    assert checks == [('2.3.6', 'onedl-mmcv')] * 2
    wheel = installer.cache_dir('2.3.6', 'onedl-mmcv') / (
        'onedl_mmcv-2.3.6-cp311-cp311-linux_x86_64.whl')
    assert ran[0][-3:] == ['--no-deps', '--force-reinstall', str(wheel)]
    assert f'using cached wheel {wheel}' in capsys.readouterr().out


def _fake_sdist(tmp_path: Path, name: str, folder: str) -> Path:
    src = tmp_path / 'fake' / folder
    src.mkdir(parents=True)
    (src / 'setup.py').write_text("flags = ['-std=c++17', '-O3']\n")
    sdist = tmp_path / name
    with tarfile.open(sdist, 'w:gz') as tar:
        tar.add(src, arcname=folder)
    return sdist


@pytest.mark.parametrize('name', ['onedl_mmcv-2.3.6.tar.gz', 'onedl-mmcv-2.3.6.tar.gz'])
def test_build_wheel_of_the_fork_from_its_sdist(installer, monkeypatch, tmp_path, name):
    """The fork's sdist (either spelling) is unpacked, its C++ flags rewritten, and the wheel
    named after the fork is what lands in the cache."""
    sdist = _fake_sdist(tmp_path, name, 'onedl_mmcv-2.3.6')
    monkeypatch.setattr(installer, 'torch_needs_cxx20', lambda: True)
    monkeypatch.delenv('CFLAGS', raising=False)
    seen = {}

    def fake_pip(cmd, **kw):
        src, out = Path(cmd[-1]), Path(cmd[cmd.index('-w') + 1])
        seen['setup.py'] = (src / 'setup.py').read_text()
        seen['env'] = kw['env']
        out.mkdir(parents=True)
        (out / 'onedl_mmcv-2.3.6-cp311-cp311-linux_x86_64.whl').write_bytes(b'wheel')
    monkeypatch.setattr(installer, 'run', fake_pip)
    wheel = installer.build_wheel('2.3.6', tmp_path / 'cache', sdist, 'onedl-mmcv')
    assert wheel == tmp_path / 'cache' / 'onedl_mmcv-2.3.6-cp311-cp311-linux_x86_64.whl'
    assert wheel.read_bytes() == b'wheel'
    assert seen['setup.py'] == "flags = ['-std=c++20', '-O3']\n"
    assert seen['env']['MMCV_WITH_OPS'] == '1'
    # Python's own flags (optimisation, NDEBUG), without debug info
    python_flags = sysconfig.get_config_var('CFLAGS').split()
    assert seen['env']['CFLAGS'].split() == python_flags + ['-g0']


def test_build_flags_keep_the_users_cflags(installer, monkeypatch):
    monkeypatch.setenv('CFLAGS', '-O2 -march=native')
    assert installer.cflags_without_debug_info() == '-O2 -march=native -g0'


def test_build_wheel_refuses_the_other_distributions_sdist(installer, tmp_path):
    sdist = _fake_sdist(tmp_path, 'mmcv-2.1.0.tar.gz', 'mmcv-2.1.0')
    with pytest.raises(installer.InstallError,
                       match='not the source distribution of onedl-mmcv 2.3.6 '
                             r'\(expected onedl_mmcv-2.3.6.tar.gz\)'):
        installer.build_wheel('2.3.6', tmp_path / 'cache', sdist, 'onedl-mmcv')
