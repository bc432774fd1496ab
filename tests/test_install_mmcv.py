"""tools/install_mmcv.py: cache key, C++ standard patch, verification of the ops."""
from __future__ import annotations

import sys

import pytest
import torch

from tests.conftest import load_tool


@pytest.fixture(scope='module')
def installer():
    return load_tool('install_mmcv')


def test_cache_key_names_mmcv_torch_python_and_flavour(installer, monkeypatch, tmp_path):
    monkeypatch.setenv('CONVNEXT_DENSE_CACHE', str(tmp_path))
    key = installer.cache_dir('2.1.0')
    assert key.parent == tmp_path / 'wheels'
    torch_version = torch.__version__.split('+')[0]
    flavour = 'cpu' if not torch.cuda.is_available() else 'cu'
    py = f'py{sys.version_info.major}{sys.version_info.minor}'
    assert key.name.startswith(f'mmcv-2.1.0_torch-{torch_version}_{flavour}')
    assert key.name.endswith(py)


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
