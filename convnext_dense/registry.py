"""Register this package's modules into the mmdet and mmseg registries.

Only the toolboxes that are installed are touched: a missing mmdet or mmseg
is skipped, any other import error is raised as it is.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from mmengine.registry import Registry

#: Toolboxes whose model registries receive the backbone.
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


def register_models(*classes: type) -> list[str]:
    """Register model classes in every installed toolbox; return the scopes used."""
    scopes = []
    for module in installed_registry_modules():
        for cls in classes:
            register(module.MODELS, cls)
        scopes.append(module.MODELS.scope)
    return scopes
