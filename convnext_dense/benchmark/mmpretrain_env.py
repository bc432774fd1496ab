"""Make mmpretrain's ConvNeXt importable for the benchmark: as installed, or from an overlay.

mmpretrain 1.2.0 (the backbone of mmdet's and mmseg's own ConvNeXt configs) fails to import
where transformers 5 is installed: it asks whether transformers is installed and, if so, imports
its multimodal models, one of which subclasses a class transformers 5 no longer has. Nothing the
benchmark uses needs those models. :func:`activate_mmpretrain` therefore imports mmpretrain with
transformers hidden, as a module (``sys.modules['transformers'] = None``, so ``import
transformers`` raises ImportError) and as an installed distribution (what mmpretrain asks
``importlib_metadata`` or, onedl-mmpretrain, ``importlib.metadata``), **during that import
only**: afterwards transformers is what it was
(imported or not), mmpretrain has registered no multimodal model, and every later import of
mmpretrain's modules finds them already imported or free of transformers. So activation works
whatever the process imported before (``import convnext_dense`` already imports transformers,
through mmengine's optimizer registry), and mmdet and mmseg, which import mmpretrain whenever
it is importable, find the one imported here.

Where mmpretrain comes from, tried in this order:

1. **installed** (``pip install .[benchmark]``): ``import mmpretrain`` as installed.
2. **the overlay**: this project's ``make setup`` cannot install mmpretrain into ``.venv``
   (the tests need transformers 5, and a mmpretrain that fails to import breaks every mmdet
   model there). It installs it, with the runtime dependencies ``.venv`` lacks, into
   ``<sys.prefix>/overlays/mmpretrain``. Activating it puts that folder first on ``sys.path``
   for good (mmpretrain and its dependencies import lazily later too).

Otherwise the result says why mmpretrain is unusable: not installed and no overlay, or
installed (or in the overlay) but failing to import, with the error.

When to activate: at the start of a process that should see mmpretrain, before mmdet's or
mmseg's models are imported (mmdet's ReID data preprocessor looks for mmpretrain once, when it
is imported; the benchmark does not use it, so later works too). Activating changes the process
for good: mmpretrain becomes importable for everything in it. The benchmark calls it first thing
in :func:`~convnext_dense.benchmark.suite.run` (through ``mmpretrain_status``): what it measures
against mmpretrain (the backbone column, the whole Mask R-CNN and UperNet) runs in the same
process as this package's models, interleaved step by step, so a subprocess is no option there.
Tests activate the overlay only in subprocesses: the pytest process must not see mmpretrain.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..stack import current_stack

#: The mmpretrain release the overlay holds, per OpenMMLab stack: mmpretrain 1.2.0 (mmcv 2.1,
#: mmdet 3.3; also the benchmark extra's), or on the maintained forks their own,
#: onedl-mmpretrain 1.3.6.
MMPRETRAIN_VERSIONS = {'upstream': '1.2.0', 'onedl': '1.3.6'}
#: The one for the stack installed here.
MMPRETRAIN_VERSION = MMPRETRAIN_VERSIONS[
    'onedl' if current_stack('mmcv') == 'onedl' else 'upstream']


def default_overlay() -> Path:
    """``<sys.prefix>/overlays/mmpretrain``: where ``make setup`` puts mmpretrain."""
    return Path(sys.prefix) / 'overlays' / 'mmpretrain'


@dataclass(frozen=True)
class MMPretrainStatus:
    """Whether mmpretrain's ConvNeXt can be used, where it came from, and why not."""

    installed: bool
    #: ``'ExcType: message'`` where mmpretrain is installed but fails to import
    import_error: str | None = None
    #: the imported version (usable only)
    version: str | None = None
    #: the overlay folder it was imported from (None: imported as installed)
    overlay: str | None = None
    #: why it is unusable, beyond the import error (no overlay; the overlay's import failed)
    reason: str | None = None

    @property
    def usable(self) -> bool:
        return self.installed and self.import_error is None and self.reason is None

    def describe(self) -> str:
        """One line for the report."""
        if self.usable:
            where = f'overlay {self.overlay}' if self.overlay else 'installed'
            return f'mmpretrain {self.version} ({where})'
        if not self.installed:
            return 'mmpretrain: not installed' + (f'; {self.reason}' if self.reason else '')
        if self.import_error is not None:
            return (f'mmpretrain is installed but fails to import: {self.import_error}'
                    + (f'; {self.reason}' if self.reason else ''))
        return f'mmpretrain cannot be used: {self.reason}'


def _error_line(error: BaseException) -> str:
    message = ' '.join(str(error).split())
    if len(message) > 300:
        message = message[:297] + '...'
    return f'{type(error).__name__}: {message}'


def _forget_mmpretrain() -> None:
    """Drop modules a failed mmpretrain import left behind, so the next import starts afresh."""
    for name in list(sys.modules):
        if name == 'mmpretrain' or name.startswith('mmpretrain.'):
            del sys.modules[name]


def _import_convnext() -> str:
    """Import mmpretrain and its ConvNeXt, transformers hidden meanwhile; its version."""
    with _transformers_hidden():
        import mmpretrain
        from mmpretrain.models import ConvNeXt as _  # noqa: F401
    return str(mmpretrain.__version__)


@contextlib.contextmanager
def _transformers_hidden() -> Iterator[None]:
    """While inside: no ``transformers`` module (imports raise ImportError) and no
    ``transformers`` distribution for ``importlib.metadata`` and its backport
    ``importlib_metadata`` (mmpretrain 1.2.0 asks the backport, onedl-mmpretrain 1.3.6 the
    standard library); afterwards all as before."""
    missing = object()
    module = sys.modules.get('transformers', missing)
    sys.modules['transformers'] = None  # type: ignore[assignment]
    metadata_modules = [importlib.metadata]
    try:
        import importlib_metadata  # a dependency of mmpretrain 1.2.0
        metadata_modules.append(importlib_metadata)
    except ImportError:
        pass
    originals = [(m, m.distribution) for m in metadata_modules]
    for metadata, distribution in originals:
        metadata.distribution = _without_transformers(distribution, metadata.PackageNotFoundError)
    try:
        yield
    finally:
        for metadata, distribution in originals:
            metadata.distribution = distribution
        if module is missing:
            del sys.modules['transformers']
        else:
            sys.modules['transformers'] = module


def _without_transformers(distribution: Callable[[str], Any],
                          not_found: type[Exception]) -> Callable[[str], Any]:
    """``distribution`` that finds no ``transformers``."""
    def find(name: str) -> Any:
        if name.lower() == 'transformers':
            raise not_found(name)
        return distribution(name)
    return find


def _comes_from(module: object, folder: Path) -> bool:
    """Whether a module's file lies under ``folder``."""
    file = getattr(module, '__file__', None)
    return bool(file) and Path(file).resolve().is_relative_to(folder.resolve())


def activate_mmpretrain(overlay: str | Path | None = None,
                        use_overlay: bool = True) -> MMPretrainStatus:
    """Make mmpretrain importable in this process, if it can be; say how, or why not.

    Args:
        overlay: the overlay folder (default :func:`default_overlay`).
        use_overlay: False: only an installed mmpretrain is tried (``sys.path`` is left as
            it is).

    An mmpretrain already imported is reported as it is. Otherwise ``import mmpretrain`` is
    tried as installed; where that fails (not installed, or installed but broken) and the
    overlay exists, the overlay is activated (first on ``sys.path``, for good unless its
    import fails) and its mmpretrain must be the one imported. Either import runs with
    transformers hidden (see the module docstring).
    """
    folder = Path(overlay) if overlay is not None else default_overlay()
    module = sys.modules.get('mmpretrain', ...)
    if module is None:  # blocked in this process (``sys.modules['mmpretrain'] = None``)
        return MMPretrainStatus(installed=False)
    if module is not ...:  # imported already (by an earlier call)
        return MMPretrainStatus(True, version=str(getattr(module, '__version__', '?')),
                                overlay=str(folder) if _comes_from(module, folder) else None)
    installed_error: str | None = None
    installed = importlib.util.find_spec('mmpretrain') is not None
    if installed:
        try:
            return MMPretrainStatus(True, version=_import_convnext())
        except Exception as error:  # a broken install fails in many ways; each is reported
            installed_error = _error_line(error)
            _forget_mmpretrain()
    if not use_overlay:
        return MMPretrainStatus(installed, import_error=installed_error)
    if not (folder / 'mmpretrain' / '__init__.py').is_file():
        return MMPretrainStatus(installed, import_error=installed_error,
                                reason=f'no overlay at {folder} (`make setup` installs '
                                       f'mmpretrain {MMPRETRAIN_VERSION} there)')
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        version = _import_convnext()
    except Exception as error:
        _forget_mmpretrain()
        sys.path.remove(str(folder))
        return MMPretrainStatus(True, import_error=_error_line(error),
                                reason=f'imported from the overlay {folder}')
    if not _comes_from(sys.modules['mmpretrain'], folder):
        return MMPretrainStatus(True, version=version,
                                reason=f'mmpretrain was imported from '
                                       f'{sys.modules["mmpretrain"].__file__}, not from the '
                                       f'overlay {folder}')
    return MMPretrainStatus(True, version=version, overlay=str(folder))
