"""Opt-in fixes to mmengine 0.10 on this stack, turned on by one switch.

``import convnext_dense`` only registers modules. Three problems of mmengine 0.10
with current torch need a change to mmengine's (or torch's) global behaviour,
so they are switched on explicitly, by :func:`enable_runtime_fixes`:

1. **Safe loading of mmengine checkpoints** (torch >= 2.6 loads with
   ``weights_only=True``; mmengine's training checkpoints hold a ``MessageHub``
   state and numpy values, so ``--resume``/``load_from`` fail): the exact
   globals they need are added to torch's weights-only allow-list (see
   :mod:`convnext_dense.checkpoint.safe_loading`); safe loading stays on.
2. **Atomic checkpoint writes**: mmengine's ``save_checkpoint`` writes the file in
   place, so a run killed while saving leaves a truncated ``epoch_N.pth`` that
   ``--resume`` then picks. With the fix, checkpoints saved to local paths are
   written to a temporary file and renamed into place. Only checkpoints: other
   writes of mmengine's file backends are untouched.
3. **The config formatted once, not at every use**: mmengine formats the whole config
   with yapf (about a second for a detector's config on this CPU) each time it logs it,
   dumps it (work dir, visualizer) and saves a checkpoint (its ``meta``), so a run paid
   several seconds for the same text. With the fix, yapf's ``FormatCode`` remembers its
   last results for mmengine's style: the same text in, the same formatted text out,
   without formatting it again (:func:`memoize_config_formatting`).

The project's ``tools/`` turn the switch on. With mmdet's or mmseg's own
``tools/train.py``, turn it on from the config::

    custom_imports = dict(imports=['convnext_dense', 'convnext_dense.enable_fixes'],
                          allow_failed_imports=False)

or call ``convnext_dense.enable_runtime_fixes()`` in your own script.

One more fix is applied by ``import convnext_dense`` itself, because it must be in place
before a config is read (mmengine resolves ``_base_`` before a config's ``custom_imports``
run) and it only turns an error into the intended result:

4. **Config scopes of the maintained forks** (:func:`fix_config_scope_packages`):
   mmengine's ``MODULE2PACKAGE`` maps the scope ``mmseg`` to the distribution
   ``mmsegmentation``; onedl-mmengine keeps that entry, but the fork's distribution is
   ``onedl-mmsegmentation``, so every ``mmseg::`` base fails with "mmsegmentation is not
   installed". Where a toolbox scope names a distribution that is not installed while its
   module imports, the entry is set to the module's name, which mmengine then finds on
   ``sys.path`` (as it finds ``mmdet``, mapped to its module name). With upstream
   mmsegmentation installed nothing changes.
"""
from __future__ import annotations

import functools
import importlib.util
import io
import os
from importlib import metadata
from typing import Any, Callable

from ..checkpoint.safe_loading import allow_mmengine_checkpoints
from ..utils import atomic_file

#: Where mmengine 0.10 binds ``save_checkpoint`` under its own name: the defining module,
#: the ``mmengine.runner`` package (CheckpointHook imports it from there at call time) and
#: the Runner's module (imported at module level).
SAVE_CHECKPOINT_MODULES = ('mmengine.runner.checkpoint', 'mmengine.runner',
                           'mmengine.runner.runner')
_MARK = '_convnext_dense_atomic'


def _is_local(filename: str, backend_args: dict | None) -> bool:
    from mmengine.fileio import get_file_backend
    from mmengine.fileio.backends import LocalBackend
    if str(filename).startswith('pavi://'):
        return False
    return isinstance(get_file_backend(filename, backend_args=backend_args), LocalBackend)


def atomic_save_checkpoint(original: Callable[..., None]) -> Callable[..., None]:
    """Wrap mmengine's ``save_checkpoint``: local files appear only once complete."""

    def save_checkpoint(checkpoint: Any, filename: str, file_client_args: dict | None = None,
                        backend_args: dict | None = None) -> None:
        if file_client_args is not None or not _is_local(filename, backend_args):
            return original(checkpoint, filename, file_client_args, backend_args)
        import torch
        with io.BytesIO() as buffer:  # serialise first, as mmengine does: no file on error
            torch.save(checkpoint, buffer)
            with atomic_file(os.fspath(filename)) as f:
                f.write(buffer.getbuffer())
        return None

    save_checkpoint.__doc__ = original.__doc__
    save_checkpoint.__wrapped__ = original
    setattr(save_checkpoint, _MARK, True)
    return save_checkpoint


def make_checkpoint_saves_atomic() -> None:
    """Bind the atomic ``save_checkpoint`` wherever mmengine looks it up (idempotent)."""
    import importlib
    modules = [importlib.import_module(name) for name in SAVE_CHECKPOINT_MODULES]
    original = modules[0].save_checkpoint
    if getattr(original, _MARK, False):
        return
    wrapped = atomic_save_checkpoint(original)
    for module in modules:
        if getattr(module, 'save_checkpoint', None) is original:
            module.save_checkpoint = wrapped


_MEMO_MARK = '_convnext_dense_memoized'
#: how many formatted configs are remembered (a run formats one or two: the config and, for
#: the demo and tests, an untrained or second run's)
FORMATTED_CONFIGS_KEPT = 8


def memoized_format_code(original: Callable[..., tuple[str, bool]]
                         ) -> Callable[..., tuple[str, bool]]:
    """Wrap yapf's ``FormatCode``: a call with only the code and a style dict (how mmengine
    calls it) returns the remembered result for the same code and style; any other call
    goes to yapf as it is."""

    @functools.lru_cache(maxsize=FORMATTED_CONFIGS_KEPT)
    def format_once(code: str, style: tuple) -> tuple[str, bool]:
        return original(code, style_config=dict(style))

    def FormatCode(unformatted_source, *args, **kwargs):  # noqa: N802 (yapf's name)
        style = kwargs.get('style_config')
        if not args and set(kwargs) == {'style_config'} and isinstance(style, dict):
            try:
                return format_once(unformatted_source, tuple(sorted(style.items())))
            except TypeError:  # a style value that cannot be a key: not remembered
                pass
        return original(unformatted_source, *args, **kwargs)

    FormatCode.__doc__ = original.__doc__
    FormatCode.__wrapped__ = original
    FormatCode.cache_info = format_once.cache_info
    setattr(FormatCode, _MEMO_MARK, True)
    return FormatCode


def memoize_config_formatting() -> None:
    """Bind the remembering ``FormatCode`` where mmengine looks it up (idempotent): yapf's
    module (onedl-mmengine imports it from there at each call) and mmengine's config module
    (mmengine 0.10.7 binds it at import)."""
    import mmengine.config.config as config_module
    from yapf.yapflib import yapf_api
    original = yapf_api.FormatCode
    if getattr(original, _MEMO_MARK, False):
        return
    wrapped = memoized_format_code(original)
    yapf_api.FormatCode = wrapped
    if getattr(config_module, 'FormatCode', None) is original:
        config_module.FormatCode = wrapped


#: the config scopes (modules) of the toolboxes whose ``MODULE2PACKAGE`` entry is checked
TOOLBOX_SCOPES = ('mmdet', 'mmseg')


def fix_config_scope_packages(table: dict[str, str] | None = None,
                              scopes: tuple[str, ...] = TOOLBOX_SCOPES) -> dict[str, str]:
    """Point each scope whose distribution is missing but whose module imports at its module.

    Args:
        table: the scope -> distribution table (default: mmengine's ``MODULE2PACKAGE``).
        scopes: the scopes to check.

    Returns:
        The entries changed, scope -> what it named before (empty where nothing needed a fix).
    """
    if table is None:
        from mmengine.config.utils import MODULE2PACKAGE as table
    changed = {}
    for scope in scopes:
        package = table.get(scope)
        if package is None or package == scope:
            continue
        try:
            metadata.distribution(package)
        except metadata.PackageNotFoundError:
            if importlib.util.find_spec(scope) is not None:
                changed[scope] = package
                table[scope] = scope
    return changed


def runtime_fixes_enabled() -> dict[str, bool]:
    """Which fixes are on in this process (for logs and tests)."""
    import mmengine.runner.checkpoint as ckpt
    from torch.serialization import get_safe_globals
    from yapf.yapflib import yapf_api

    from ..checkpoint.safe_loading import mmengine_safe_globals
    allowed = {id(g[0] if isinstance(g, tuple) else g) for g in get_safe_globals()}
    return dict(
        safe_mmengine_checkpoints=all(id(g[0] if isinstance(g, tuple) else g) in allowed
                                      for g in mmengine_safe_globals()),
        atomic_checkpoints=getattr(ckpt.save_checkpoint, _MARK, False),
        config_formatted_once=getattr(yapf_api.FormatCode, _MEMO_MARK, False))


def enable_runtime_fixes() -> None:
    """Turn on the three switched fixes of this module for the whole process (idempotent)."""
    allow_mmengine_checkpoints()
    make_checkpoint_saves_atomic()
    memoize_config_formatting()


__all__ = ['enable_runtime_fixes', 'fix_config_scope_packages', 'make_checkpoint_saves_atomic',
           'memoize_config_formatting', 'runtime_fixes_enabled']
