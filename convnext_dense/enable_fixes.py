"""Importing this module turns on :mod:`convnext_dense.engine.runtime_fixes`.

It exists for configs run by mmdet's or mmseg's own ``tools/train.py``, where
``custom_imports`` is the only place to run code::

    custom_imports = dict(imports=['convnext_dense', 'convnext_dense.enable_fixes'],
                          allow_failed_imports=False)
"""
from .engine.runtime_fixes import enable_runtime_fixes

enable_runtime_fixes()
