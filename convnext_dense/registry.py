"""Register this package into the OpenMMLab registries: its modules and its config scope.

Modules go into the mmdet and mmseg registries; only the toolboxes that are
installed are touched: a missing mmdet or mmseg is skipped, any other import
error is raised as it is. The config scope ``convnext_dense::`` is added to
mmengine's table of packages that ship configs.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from mmengine.registry import Registry

#: The name before ``::`` in a config's ``_base_`` (``convnext_dense::configs/...``).
CONFIG_SCOPE = 'convnext_dense'
#: The pip distribution that provides the scope (what mmengine looks up to locate it).
DISTRIBUTION = 'convnext_dense'
#: Toolboxes whose registries receive this package's classes.
TOOLBOX_REGISTRY_MODULES = ('mmdet.registry', 'mmseg.registry')


def installed_registry_modules(toolboxes: tuple[str, ...] = ('mmdet', 'mmseg')
                               ) -> list[ModuleType]:
    """Return the ``registry`` modules of the installed ``toolboxes``."""
    modules = []
    for name in TOOLBOX_REGISTRY_MODULES:
        if name.split('.')[0] not in toolboxes:
            continue
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name not in (name, name.split('.')[0]):
                raise
    return modules


def register(registry: Registry, cls: type, name: str | None = None) -> None:
    """Register ``cls`` once under ``name``; fail if another class holds the name."""
    name = name or cls.__name__
    existing = registry.module_dict.get(name)
    if existing is cls:
        return
    if existing is not None:
        raise KeyError(f'{registry.scope}.{registry.name} already has {name!r} '
                       f'({existing.__module__}.{existing.__qualname__}); cannot register '
                       f'{cls.__module__}.{cls.__qualname__} under that name')
    registry.register_module(name=name, module=cls)


def register_in_toolboxes(registry_name: str, *classes: type,
                          toolboxes: tuple[str, ...] = ('mmdet', 'mmseg')) -> list[str]:
    """Register classes in the registry ``registry_name`` of every installed toolbox.

    Args:
        registry_name: Attribute of ``mmdet.registry``/``mmseg.registry``, e.g.
            ``'MODELS'`` or ``'OPTIM_WRAPPER_CONSTRUCTORS'``.
        *classes: Classes registered under their own names.
        toolboxes: Only these toolboxes (e.g. ``('mmseg',)`` for a segmentation-only class).

    Returns:
        The scopes (``'mmdet'``, ``'mmseg'``) whose registry received the classes.
    """
    scopes = []
    for module in installed_registry_modules(toolboxes):
        registry = getattr(module, registry_name, None)
        if not isinstance(registry, Registry):
            raise ValueError(f'{module.__name__} has no registry named {registry_name!r}')
        for cls in classes:
            register(registry, cls)
        scopes.append(registry.scope)
    return scopes


def register_models(*classes: type, toolboxes: tuple[str, ...] = ('mmdet', 'mmseg')
                    ) -> list[str]:
    """Register model classes in every installed toolbox; return the scopes used."""
    return register_in_toolboxes('MODELS', *classes, toolboxes=toolboxes)


def register_config_scope() -> None:
    """Let mmengine resolve ``convnext_dense::`` bases: add this package to ``MODULE2PACKAGE``.

    mmengine's config loader accepts ``<scope>::<path>`` only for the scopes in
    ``mmengine.config.utils.MODULE2PACKAGE`` (the OpenMMLab projects), mapped to the
    distribution whose ``.mim/configs`` it searches. This adds ``'convnext_dense'`` to that
    table and touches nothing else; idempotent.

    Raises:
        RuntimeError: the table already maps the scope to another distribution.
    """
    from mmengine.config.utils import MODULE2PACKAGE

    existing = MODULE2PACKAGE.setdefault(CONFIG_SCOPE, DISTRIBUTION)
    if existing != DISTRIBUTION:
        raise RuntimeError(f'mmengine already maps the config scope {CONFIG_SCOPE!r} to the '
                           f'distribution {existing!r}')
