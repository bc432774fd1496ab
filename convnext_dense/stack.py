"""Which OpenMMLab stack provides ``mmengine``, ``mmcv``, ``mmdet`` and ``mmseg`` here.

Two stacks provide these import names, from different distributions:

========== ============================ ==================================
module     upstream                     onedl (the maintained forks)
========== ============================ ==================================
mmengine   mmengine 0.10.7              onedl-mmengine 0.10.12
mmcv       mmcv 2.1.0                   onedl-mmcv 2.3.6
mmdet      mmdet 3.3.0                  onedl-mmdetection 3.5.1
mmseg      mmsegmentation 1.2.2         onedl-mmsegmentation 1.4.2
========== ============================ ==================================

(the versions verified with this project). pip does not count one stack's distribution as the
other's, so this package's requirements leave them to the extras ``upstream`` and ``onedl``,
and ``import convnext_dense`` calls :func:`check_stack`: it looks up the known distribution
names in the installed metadata (``importlib.metadata``; ``importlib.util.find_spec`` for a
module without one; nothing is imported) and

- raises :class:`StackError` (an ImportError) when ``mmengine`` or ``mmcv`` is missing, or
  when one import name is provided by two distributions (their files overwrite each other);
- warns when the modules come from different stacks (an untested mix).

``mmdet`` and ``mmseg`` are optional (the backbone registers into whichever is installed).
A module that imports but whose distribution is not one of these (a source checkout, a
third build) is accepted as it is.
"""
from __future__ import annotations

import importlib.util
import warnings
from importlib import metadata

#: stack -> module -> (distribution, verified version)
STACKS: dict[str, dict[str, tuple[str, str]]] = {
    'upstream': {'mmengine': ('mmengine', '0.10.7'), 'mmcv': ('mmcv', '2.1.0'),
                 'mmdet': ('mmdet', '3.3.0'), 'mmseg': ('mmsegmentation', '1.2.2')},
    'onedl': {'mmengine': ('onedl-mmengine', '0.10.12'), 'mmcv': ('onedl-mmcv', '2.3.6'),
              'mmdet': ('onedl-mmdetection', '3.5.1'),
              'mmseg': ('onedl-mmsegmentation', '1.4.2')},
}
#: the modules ``import convnext_dense`` needs; mmdet and mmseg are optional
REQUIRED = ('mmengine', 'mmcv')
MODULES = ('mmengine', 'mmcv', 'mmdet', 'mmseg')


class StackError(ImportError):
    """The OpenMMLab packages this project needs are missing or installed over each other."""


def verified_versions() -> str:
    """One line per stack: its verified versions and the extra that installs it."""
    return '\n'.join(
        f'  {stack}: ' + ', '.join(f'{dist} {version}' for dist, version in modules.values())
        + f' (pip install "convnext_dense[{stack}]")' for stack, modules in STACKS.items())


def stack_of_distribution(module: str, dist: str) -> str | None:
    """The stack whose distribution of ``module`` is ``dist``, or None."""
    dist = dist.lower().replace('_', '-')
    return next((stack for stack, modules in STACKS.items() if modules[module][0] == dist),
                None)


#: other distributions known to provide one of these modules (reported when doubled)
OTHER_DISTRIBUTIONS = {'mmcv': ('mmcv-full', 'mmcv-lite')}


def installed_providers(modules: tuple[str, ...] = MODULES) -> dict[str, list[str]]:
    """Module -> the installed distributions among those known to provide it (sorted).

    Only these names are looked up (``importlib.metadata.distribution``): reading every
    installed distribution's file list (``packages_distributions``) takes seconds.
    """
    found = {}
    for module in modules:
        names = [stack[module][0] for stack in STACKS.values()]
        names += OTHER_DISTRIBUTIONS.get(module, ())
        found[module] = sorted(name for name in names if _installed(name))
    return found


def _installed(dist: str) -> bool:
    try:
        metadata.distribution(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def check_stack(providers: dict[str, list[str]] | None = None,
                importable: dict[str, bool] | None = None) -> str | None:
    """Check the installed OpenMMLab packages; return the stack they come from.

    Args:
        providers: module -> distributions providing it (default: read from the installed
            metadata, :func:`installed_providers`).
        importable: module -> whether it can be found on ``sys.path`` (default:
            ``importlib.util.find_spec``); consulted for modules without a distribution.

    Returns:
        ``'upstream'`` or ``'onedl'``, or None when no module's distribution is known.

    Raises:
        StackError: ``mmengine`` or ``mmcv`` is missing, or a module has two distributions.
    """
    providers = installed_providers() if providers is None else providers
    if importable is None:
        importable = {m: importlib.util.find_spec(m) is not None for m in MODULES
                      if not providers.get(m)}
    missing = [m for m in REQUIRED if not providers.get(m) and not importable.get(m)]
    if missing:
        raise StackError(
            f'convnext_dense needs {" and ".join(missing)}, which '
            f'{"is" if len(missing) == 1 else "are"} not installed. Install one OpenMMLab '
            'stack (mmcv of either is built from source: python tools/install_mmcv.py '
            f'--dist mmcv|onedl-mmcv); verified versions:\n{verified_versions()}')
    doubled = {m: dists for m, dists in providers.items() if len(dists) > 1}
    if doubled:
        raise StackError(
            'one import name is provided by two installed distributions, whose files overwrite '
            'each other: ' + '; '.join(f'{m}: {", ".join(d)}' for m, d in doubled.items())
            + '. Uninstall one of each pair (keep one stack per environment); verified '
            f'versions:\n{verified_versions()}')
    stacks = {m: stack_of_distribution(m, dists[0]) for m, dists in providers.items() if dists}
    found = {s for s in stacks.values() if s is not None}
    if len(found) > 1:
        warnings.warn(
            'the OpenMMLab packages come from different stacks (an untested mix): '
            + ', '.join(f'{m} from {providers[m][0]} ({s})' for m, s in stacks.items() if s)
            + f'. Verified versions:\n{verified_versions()}', stacklevel=2)
        return None
    return found.pop() if found else None


def current_stack(module: str = 'mmdet') -> str | None:
    """The stack whose distribution provides ``module`` here, or None (not installed, or
    provided by a distribution of neither stack)."""
    dists = installed_providers((module,))[module]
    return stack_of_distribution(module, dists[0]) if len(dists) == 1 else None
