"""Packaging: the configs ship inside the package and load by package scope from anywhere.

The fast tests check the lookup in this working tree (a clone, or the project's editable
install). The slow ones build the wheel from a copy of the working tree, install it with
``--no-deps --target`` beside the project's ``.venv`` packages, and in a subprocess whose
working directory is outside the repository and whose ``sys.path`` holds the install but not
the repository, load a user config that inherits ``convnext_dense::configs/...`` and build its
model.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest
from mmengine.config import Config
from mmengine.config.utils import MODULE2PACKAGE

from convnext_dense import __version__
from convnext_dense.apis.config_files import (
    SCOPE,
    config_root,
    list_configs,
    packaged_config,
    register_config_scope,
    resolve_config,
    scoped_name,
)
from tests.conftest import REPO

DET = 'configs/mask_rcnn_convnext_t_coco.py'
SEG = 'configs/upernet_convnext_t_ade20k_512.py'
DEMO = 'configs/demo/mask_rcnn_convnext_demo.py'


def repo_configs() -> list[str]:
    return sorted(path.relative_to(REPO).as_posix() for path in (REPO / 'configs').rglob('*.py'))


def package_modules() -> list[str]:
    """The package's Python files in the working tree, as wheel entries."""
    package = REPO / 'convnext_dense'
    return sorted(path.relative_to(REPO).as_posix() for path in package.rglob('*.py')
                  if '.mim' not in path.relative_to(package).parts
                  and '__pycache__' not in path.parts)


# --- the lookup in the working tree -----------------------------------------------------------


def test_shipped_configs_are_the_repository_configs():
    assert (config_root() / 'configs').resolve() == REPO / 'configs'
    assert list_configs() == repo_configs()
    assert DET in list_configs('*.py') and DEMO not in list_configs('*.py')
    assert not [name for name in list_configs(include_bases=False) if '/_base_/' in name]


def test_packaged_config_finds_the_repository_file():
    expected = str(REPO / DET)
    assert packaged_config(DET) == expected
    assert packaged_config(f'{SCOPE}::{DET}') == expected
    assert packaged_config('configs/demo/../mask_rcnn_convnext_t_coco.py') == expected
    assert scoped_name(DET) == 'convnext_dense::configs/mask_rcnn_convnext_t_coco.py'


@pytest.mark.parametrize('name', ['mmdet::configs/x.py', '/abs/configs/x.py',
                                  'configs/../setup.py', '_base_/convnext_backbone.py',
                                  'configs'])
def test_packaged_config_rejects_other_names(name):
    with pytest.raises(ValueError):
        packaged_config(name)


def test_packaged_config_names_what_exists():
    with pytest.raises(FileNotFoundError, match='mask_rcnn_convnext_t_coco.py'):
        packaged_config('configs/mask_rcnn_convnext_typo.py')


def test_resolve_config_prefers_existing_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert resolve_config(DET) == str(REPO / DET)  # no such file here: the shipped one
    local = tmp_path / 'configs' / 'mask_rcnn_convnext_t_coco.py'
    local.parent.mkdir()
    local.write_text('x = 1\n')
    assert resolve_config(DET) == DET
    assert resolve_config(scoped_name(DET)) == str(REPO / DET)
    with pytest.raises(FileNotFoundError):
        resolve_config('elsewhere/missing.py')


def test_register_config_scope_is_idempotent(monkeypatch):
    monkeypatch.delitem(MODULE2PACKAGE, SCOPE, raising=False)
    register_config_scope()
    register_config_scope()
    assert MODULE2PACKAGE[SCOPE] == 'convnext_dense'
    monkeypatch.setitem(MODULE2PACKAGE, SCOPE, 'another-distribution')
    with pytest.raises(RuntimeError, match='another-distribution'):
        register_config_scope()


def test_mmengine_resolves_the_scope_only_after_registration(tmp_path, monkeypatch):
    """mmengine reads ``_base_`` before ``custom_imports``: the scope must be registered first.

    This is why a tool that never imports convnext_dense (mmdet's own tools/train.py) cannot
    load a config naming ``convnext_dense::`` bases.
    """
    monkeypatch.delitem(MODULE2PACKAGE, SCOPE, raising=False)
    config = tmp_path / 'user.py'
    config.write_text(f"_base_ = '{scoped_name(DET)}'\n"
                      "custom_imports = dict(imports=['convnext_dense'])\n")
    with pytest.raises(AssertionError, match='convnext_dense'):
        Config.fromfile(str(config))


# --- the wheel ---------------------------------------------------------------------------------

def copy_sources(destination: Path) -> None:
    """Copy the working tree's sources (what git tracks or would track: no environments,
    outputs or caches, whatever their names) to ``destination``."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                            cwd=REPO, check=True, capture_output=True, text=True).stdout
    for name in filter(None, listed.split('\0')):
        file = REPO / name
        if file.is_symlink() or file.is_file():  # one deleted in the working tree is left out
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, destination / name, follow_symlinks=False)

#: Runs in the subprocess: cwd outside the repository, sys.path = install + .venv packages.
USER_SCRIPT = '''
import json, os, sys, warnings
warnings.simplefilter('ignore')
site, repo = sys.argv[1], sys.argv[2]
on_path = [p for p in sys.path if os.path.realpath(p or os.getcwd()) == repo]
import convnext_dense  # registers the config scope
from convnext_dense.apis.config_files import packaged_config, resolve_config
from convnext_dense.apis.runner import load_config
from mmengine.config import Config
from mmengine.dataset import Compose
from mmengine.registry import init_default_scope


def foreign_scopes(node, path=''):
    """Where the loaded config carries _scope_='convnext_dense' (not a registry scope)."""
    found = []
    if isinstance(node, dict):
        if node.get('_scope_') == 'convnext_dense':
            found.append(path)
        for key, value in node.items():
            found += foreign_scopes(value, f'{path}.{key}' if path else key)
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found += foreign_scopes(value, f'{path}.{i}')
    return found


raw_det, raw_seg = Config.fromfile('user_det.py'), Config.fromfile('user_seg.py')
det, seg = load_config('user_det.py'), load_config('user_seg.py')  # as the tools load them
init_default_scope('mmseg')
tta = Compose(seg.tta_pipeline)  # mmseg's transforms, found through the mmseg scope
init_default_scope('mmdet')
from mmdet.registry import MODELS
model = MODELS.build(det.model)
demo = Config.fromfile(packaged_config('configs/demo/mask_rcnn_convnext_demo.py'))
print(json.dumps(dict(
    repo_on_path=on_path,
    package_file=convnext_dense.__file__,
    det_text=det.text, seg_text=seg.text,
    det_model_scope=det.model.get('_scope_'), seg_model_scope=seg.model.get('_scope_'),
    det_backbone=dict(det.model.backbone), seg_backbone_type=seg.model.backbone.type,
    model_class=type(model).__name__, backbone_class=type(model.backbone).__name__,
    demo_filename=demo.filename,
    resolved=resolve_config('configs/mask_rcnn_convnext_t_coco.py'),
    foreign_scopes=sorted(set(foreign_scopes(det.to_dict()) + foreign_scopes(seg.to_dict()))),
    raw_foreign_scopes=sorted(set(foreign_scopes(raw_det.to_dict())
                                  + foreign_scopes(raw_seg.to_dict()))),
    tta_transforms=[type(t).__name__ for t in tta.transforms],
)))
'''

USER_DET = f'''\
_base_ = '{SCOPE}::{DET}'
model = dict(backbone=dict(arch='atto', init_cfg=None), neck=dict(in_channels=[40, 80, 160, 320]))
'''
USER_SEG = f'''\
_base_ = ['{SCOPE}::{SEG}']
model = dict(backbone=dict(arch='atto', init_cfg=None))
'''


@pytest.fixture(scope='module')
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the working tree (no build/ left in the repository)."""
    tmp = tmp_path_factory.mktemp('wheel')
    source = tmp / 'source'
    copy_sources(source)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '--no-index', '-q', '-w', str(tmp / 'dist'), '.'],
                   cwd=source, check=True, capture_output=True, text=True, timeout=300)
    (path,) = (tmp / 'dist').glob('convnext_dense-*.whl')
    return path


@pytest.fixture(scope='module')
def user_run(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """Install the wheel, load user configs by package scope outside the repository."""
    tmp = tmp_path_factory.mktemp('install')
    site = tmp / 'site'
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q',
                    '--target', str(site), str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    work = tmp / 'user'
    work.mkdir()
    (work / 'user_det.py').write_text(USER_DET)
    (work / 'user_seg.py').write_text(USER_SEG)
    (work / 'run.py').write_text(textwrap.dedent(USER_SCRIPT))
    env = {key: value for key, value in os.environ.items() if not key.startswith('PYTHON')}
    env['PYTHONPATH'] = str(site)
    result = subprocess.run([sys.executable, 'run.py', str(site.resolve()), str(REPO)],
                            cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return site.resolve(), json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_wheel_is_built_from_the_sources_alone(wheel):
    """No environment, output or cache of the working tree is copied (a venv is gigabytes)."""
    source = wheel.parent.parent / 'source'
    files = [file for file in source.rglob('*') if file.is_file()]
    assert not [file for file in files if file.relative_to(source).parts[0].startswith('.venv')]
    assert sum(file.stat().st_size for file in files) < 50 * 2**20


@pytest.mark.slow
def test_wheel_holds_the_package_and_its_configs(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        dist_info = f'convnext_dense-{__version__}.dist-info'
        assert {name.split('/')[0] for name in names} == {'convnext_dense', dist_info}
        prefix = 'convnext_dense/.mim/'
        configs = sorted(name[len(prefix + 'configs/'):] for name in names
                         if name.startswith(prefix + 'configs/'))
        assert configs == repo_configs()
        for name in configs:  # copies of the one source
            assert archive.read(prefix + 'configs/' + name) == (REPO / name).read_bytes(), name
        assert prefix + 'model-index.yml' in names
        modules = sorted(name for name in names
                         if name.startswith('convnext_dense/') and not name.startswith(prefix))
        assert modules == package_modules()
        assert sorted(name for name in names if name.startswith(dist_info)) == [
            f'{dist_info}/{file}' for file in ('METADATA', 'RECORD', 'WHEEL', 'top_level.txt')]
        assert len(names) == len(modules) + len(configs) + 1 + 4


@pytest.mark.slow
def test_wheel_install_serves_scoped_bases_outside_the_repository(user_run):
    site, out = user_run
    assert out['repo_on_path'] == []
    assert Path(out['package_file']).is_relative_to(site / 'convnext_dense')
    packaged = site / 'convnext_dense' / '.mim' / 'configs'
    # the inherited files are the installed copies, mmdet's own bases come from mmdet
    assert str(packaged / DET) in out['det_text'] and str(packaged / SEG) in out['seg_text']
    assert str(REPO / 'configs') not in out['det_text'] + out['seg_text']
    assert 'mmdet/.mim/configs/_base_/models/mask-rcnn_r50_fpn.py' in out['det_text']
    assert out['det_model_scope'] == 'mmdet' and out['seg_model_scope'] == 'mmseg'
    assert out['det_backbone']['type'] == 'ConvNeXt' and out['seg_backbone_type'] == 'ConvNeXt'
    assert out['det_backbone']['arch'] == 'atto' and out['det_backbone']['init_cfg'] is None
    paper = Config.fromfile(str(REPO / DET)).model.backbone
    assert out['det_backbone']['drop_path_rate'] == paper.drop_path_rate
    assert (out['model_class'], out['backbone_class']) == ('MaskRCNN', 'ConvNeXt')
    # the package's own lookup finds the installed copies too
    assert out['demo_filename'] == str(packaged / DEMO)
    assert out['resolved'] == str(packaged / DET)


#: Top-level keys that the runner or the toolboxes' tools build (pipelines: when a config
#: hands them to a dataset, as mmseg's ``--tta`` does with ``tta_pipeline``). Helpers such as
#: ``convnext_backbone`` are only substituted into ``model``, whose scope is mmdet's/mmseg's.
BUILT_KEYS = frozenset((
    'model', 'optim_wrapper', 'param_scheduler', 'train_dataloader', 'val_dataloader',
    'test_dataloader', 'val_evaluator', 'test_evaluator', 'train_cfg', 'val_cfg', 'test_cfg',
    'default_hooks', 'custom_hooks', 'visualizer', 'vis_backends', 'log_processor', 'tta_model',
    'train_pipeline', 'test_pipeline', 'tta_pipeline'))


@pytest.mark.slow
def test_scoped_bases_carry_only_registry_scopes(user_run):
    """mmengine tags what a ``convnext_dense::`` base brings in with that (non-registry)
    scope; the tools' ``load_config`` gives it the toolbox's scope, so pipelines and
    schedulers build from mmdet's/mmseg's registries."""
    _, out = user_run
    raw = [path for path in out['raw_foreign_scopes'] if path.split('.')[0] in BUILT_KEYS]
    assert 'optim_wrapper' in raw and 'tta_pipeline.1' in raw  # what mmengine does
    built = [path for path in out['foreign_scopes'] if path.split('.')[0] in BUILT_KEYS]
    assert built == []
    assert out['tta_transforms'] == ['LoadImageFromFile', 'TestTimeAug']
