"""The configs this package ships, found the same way in a clone, an editable and a wheel install.

The repository's ``configs/`` is the one copy of the configs. The package reaches it through
``convnext_dense/.mim/configs/configs``, a committed symlink to ``../../../configs`` that
setuptools copies into wheels and sdists as plain files (``[options.package_data]`` in
setup.cfg). ``.mim/configs`` is where mmengine looks for the configs of an installed package
when a config names its base ``<package>::<folder>/<file>.py``, as mmdet's and mmseg's
(``mmdet::_base_/...``) do. So every config has one name, its path in the repository:

============================  =====================================================
repository file               ``configs/mask_rcnn_convnext_t_coco.py``
base of a user's config       ``_base_ = 'convnext_dense::configs/mask_rcnn_convnext_t_coco.py'``
this module                   ``packaged_config('configs/mask_rcnn_convnext_t_coco.py')``
============================  =====================================================

(mmengine requires a folder after ``::``, so ``configs/`` stays in the name; it is also what
keeps the top-level configs reachable.)

mmengine resolves ``<package>::`` only for the packages of its ``MODULE2PACKAGE`` table, and
it reads the ``_base_`` of a config before the config's ``custom_imports``:
:func:`register_config_scope` must have run (``import convnext_dense`` runs it where the
package wires it in) before a config that names ``convnext_dense::`` bases is loaded.

Command line: ``python -m convnext_dense.apis.config_files [NAME ...]`` prints the file of
each named config, or lists the names without arguments, e.g. to hand a shipped config to a
toolbox's own ``tools/train.py``.
"""
from __future__ import annotations

import os
import os.path as osp
import sys
from pathlib import Path
from typing import Any

from ..registry import CONFIG_SCOPE as SCOPE
from ..registry import DISTRIBUTION, register_config_scope

#: The folder of the configs, in the repository and after ``convnext_dense::``.
CONFIG_FOLDER = 'configs'
SEPARATOR = '::'


def config_root() -> Path:
    """The folder mmengine searches for ``convnext_dense::`` names: ``<package>/.mim/configs``.

    Config names are relative to it (``configs/...``). In a clone and in an editable install
    ``configs/`` below it is the repository's ``configs/`` (through the symlink); in a wheel
    install it holds the copied files.
    """
    return Path(__file__).resolve().parents[1] / '.mim' / 'configs'


def config_name(name: str) -> str:
    """The package-relative name of a config: ``configs/...``, ``/``-separated and normalised.

    Args:
        name: ``configs/<file>.py`` (the config's path in the repository) or the same with
            the scope, ``convnext_dense::configs/<file>.py``.

    Raises:
        ValueError: another package's scope, an absolute path, or a path that leaves
            ``configs/``.
    """
    scope, separator, rest = name.partition(SEPARATOR)
    if separator:
        if scope != SCOPE:
            raise ValueError(f'{name!r} names a config of {scope!r}, not of {SCOPE!r}')
        name = rest
    relative = osp.normpath(name.replace('\\', '/')).replace(os.sep, '/')
    if osp.isabs(name) or relative.split('/')[0] != CONFIG_FOLDER or relative == CONFIG_FOLDER:
        raise ValueError(f'{name!r} is not a config name of {SCOPE}: expected '
                         f"'{CONFIG_FOLDER}/<file>.py' or "
                         f"'{SCOPE}{SEPARATOR}{CONFIG_FOLDER}/<file>.py'")
    return relative


def scoped_name(name: str) -> str:
    """What a config's ``_base_`` names to inherit ``name``: ``convnext_dense::configs/...``."""
    return f'{SCOPE}{SEPARATOR}{config_name(name)}'


def list_configs(pattern: str = '**/*.py', include_bases: bool = True) -> list[str]:
    """The names of the shipped configs (``configs/...``), sorted.

    Args:
        pattern: glob below ``configs/``; the default lists them all, ``'*.py'`` lists the
            top-level (paper) configs.
        include_bases: also list the files under ``_base_`` folders.
    """
    root = config_root()
    names = sorted(path.relative_to(root).as_posix()
                   for path in (root / CONFIG_FOLDER).glob(pattern) if path.is_file())
    if not include_bases:
        names = [name for name in names if '_base_' not in name.split('/')]
    return names


def packaged_config(name: str) -> str:
    """The file of a shipped config, as a path ``Config.fromfile`` loads.

    The same name works in a clone (no install), an editable install and a wheel install.
    Symlinks are resolved, so in a clone or an editable install the path is the
    repository's file (``.../configs/mask_rcnn_convnext_t_coco.py``).

    Args:
        name: ``configs/<file>.py`` or ``convnext_dense::configs/<file>.py``.

    Raises:
        ValueError: ``name`` is not a config name (see :func:`config_name`).
        FileNotFoundError: no shipped config has that name.
    """
    relative = config_name(name)
    path = config_root() / relative
    if not path.is_file():
        folder = (config_root() / relative).parent
        nearby = sorted(p.name for p in folder.glob('*.py')) if folder.is_dir() else []
        raise FileNotFoundError(
            f'{SCOPE} ships no config {relative!r} (looked in {config_root()})'
            + (f'; {folder.relative_to(config_root()).as_posix()}/ has: {", ".join(nearby)}'
               if nearby else '; `python -m convnext_dense.apis.config_files` lists them'))
    return osp.realpath(path)


def resolve_config(path_or_name: str | os.PathLike) -> str:
    """A config argument of a tool: an existing file as it is, else a shipped config.

    ``configs/mask_rcnn_convnext_t_coco.py`` is a file when the working directory is a clone
    and a shipped config name everywhere else; ``convnext_dense::configs/...`` is always the
    shipped config.

    Raises:
        FileNotFoundError: neither a file nor a shipped config.
    """
    text = os.fspath(path_or_name)
    if SEPARATOR not in text and osp.isfile(text):
        return text
    try:
        return packaged_config(text)
    except ValueError:
        raise FileNotFoundError(f'config file {text!r} does not exist') from None


def rescope_package_bases(cfg: Any, toolbox: str) -> int:
    """Give the values inherited from ``convnext_dense::`` bases the toolbox's registry scope.

    mmengine tags every top-level value with a ``type`` that a ``<package>::`` base brings
    in (and each element of a top-level list: pipelines, schedulers) with
    ``_scope_=<package>``. For mmdet's and mmseg's own bases that is a registry scope; for
    ``convnext_dense`` it is none, so ``optim_wrapper`` and ``param_scheduler`` would build
    with a warning each and pipeline transforms would be looked up in mmengine's root
    registry (``PackSegInputs is not in the mmengine::transform registry``). The tools call
    this after loading a config; user scripts that load ``convnext_dense::`` bases with
    ``Config.fromfile`` can call it too.

    Args:
        cfg: A loaded ``mmengine.Config`` (changed in place).
        toolbox: ``'mmdet'`` or ``'mmseg'``.

    Returns:
        How many values were re-scoped.
    """
    count = 0

    def visit(node: Any) -> None:
        nonlocal count
        if isinstance(node, dict):
            if node.get('_scope_') == SCOPE:
                node['_scope_'] = toolbox
                count += 1
            for value in node.values():
                visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)

    visit(cfg._cfg_dict if hasattr(cfg, '_cfg_dict') else cfg)
    return count


def main(argv: list[str] | None = None) -> int:
    """``python -m convnext_dense.apis.config_files [NAME ...]``: print files or list names."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ('-l', '--list'):
        for name in list_configs():
            print(name)
        return 0
    if args[0] in ('-h', '--help'):
        print(__doc__)
        return 0
    status = 0
    for name in args:
        try:
            print(packaged_config(name))
        except (ValueError, FileNotFoundError) as exc:
            print(f'error: {exc}', file=sys.stderr)
            status = 1
    return status


__all__ = ['CONFIG_FOLDER', 'DISTRIBUTION', 'SCOPE', 'config_name', 'config_root',
           'list_configs', 'packaged_config', 'register_config_scope', 'rescope_package_bases',
           'resolve_config', 'scoped_name']

if __name__ == '__main__':
    sys.exit(main())
