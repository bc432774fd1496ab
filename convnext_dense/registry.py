"""Register this package's modules into the mmdet and mmseg registries.

Only the toolboxes that are installed are touched: a missing mmdet or mmseg
is skipped, any other import error is raised as it is.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from mmengine.registry import Registry

#: Toolboxes whose registries receive this package's classes.
TOOLBOX_REGISTRY_MODULES = ('mmdet.registry', 'mmseg.registry')


def installed_registry_modules() -> list[ModuleType]:
    """Return the ``registry`` modules of the installed toolboxes."""
    modules = []
    for name in TOOLBOX_REGISTRY_MODULES:
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


def register_in_toolboxes(registry_name: str, *classes: type) -> list[str]:
    """Register classes in the registry ``registry_name`` of every installed toolbox.

    Args:
        registry_name: Attribute of ``mmdet.registry``/``mmseg.registry``, e.g.
            ``'MODELS'`` or ``'OPTIM_WRAPPER_CONSTRUCTORS'``.
        *classes: Classes registered under their own names.

    Returns:
        The scopes (``'mmdet'``, ``'mmseg'``) whose registry received the classes.
    """
    scopes = []
    for module in installed_registry_modules():
        registry = getattr(module, registry_name, None)
        if not isinstance(registry, Registry):
            raise ValueError(f'{module.__name__} has no registry named {registry_name!r}')
        for cls in classes:
            register(registry, cls)
        scopes.append(registry.scope)
    return scopes


def register_models(*classes: type) -> list[str]:
    """Register model classes in every installed toolbox; return the scopes used."""
    return register_in_toolboxes('MODELS', *classes)
