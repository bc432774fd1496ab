"""What the tools do: train/test config preparation, data checks, model complexity.

Submodules are imported where used (``from convnext_dense.apis.runner import ...``):
this package's ``__init__`` imports nothing, so the library part does not load
the application part.
"""
