"""tools/install_mmcv.py: cache key, C++ standard patch, verification of the ops."""
from __future__ import annotations

import sys

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
    monkeypatch.setattr(installer, 'verify', lambda version, quiet=False: True)
    installer.install('2.1.0')
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith('[install_mmcv] WARNING: CPU-only ops although a GPU is visible')
    assert lines[1] == '[install_mmcv] already installed, nothing to do'


def test_cxx_standard_patch(installer, tmp_path):
    (tmp_path / 'setup.py').write_text(
        "extra = ['-std=c++14']\nflags = ['-std=c++17', '-O3']\nkeep = '-std=c++20'\n")
    installer.patch_cxx_standard(tmp_path)
    text = (tmp_path / 'setup.py').read_text()
    assert '-std=c++14' not in text and '-std=c++17' not in text
    assert text.count('-std=c++20') == 3 and "'-O3'" in text


def test_installed_mmcv_ops_verify(installer):
    import mmcv
    assert installer.verify(mmcv.__version__)
    assert not installer.verify('0.0.0', quiet=True)  # a version mismatch is a failure


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
