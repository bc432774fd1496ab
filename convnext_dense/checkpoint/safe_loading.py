"""Let mmengine load its own checkpoints with ``torch.load(weights_only=True)``.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``, and
mmengine 0.10's training checkpoints (``--resume``, ``load_from``,
``tools/test.py``) fail to load: they hold a ``MessageHub`` state with
``HistoryBuffer`` objects and numpy scalars/arrays. Instead of turning safe
loading off, this allow-lists exactly those globals. ``HistoryBuffer`` pickles
its statistics methods as ``getattr(HistoryBuffer, 'mean')``; plain
``getattr`` would let a pickle reach anything, so the allow-listed
``getattr`` only returns those methods.
"""
from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import torch
from mmengine.logging.history_buffer import HistoryBuffer

#: numpy dtypes whose classes appear in pickled numpy scalars and arrays.
_NUMPY_DTYPES = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16,
                 np.uint32, np.uint64, np.float16, np.float32, np.float64, np.str_)


def history_buffer_getattr(obj: Any, name: str) -> Any:
    """``getattr`` limited to what a pickled ``HistoryBuffer`` needs: its statistics methods."""
    if obj is HistoryBuffer and not name.startswith('_') and callable(
            getattr(HistoryBuffer, name, None)):
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(f'getattr({obj!r}, {name!r}) is not allowed in a checkpoint')


def mmengine_safe_globals() -> list[Any]:
    """The globals an mmengine training checkpoint references, beyond tensors."""
    core = np._core if hasattr(np, '_core') else np.core
    return [
        HistoryBuffer,
        (history_buffer_getattr, 'builtins.getattr'),
        core.multiarray.scalar,
        core.multiarray._reconstruct,
        np.ndarray,
        np.dtype,
        *(type(np.dtype(t)) for t in _NUMPY_DTYPES),
    ]


def allow_mmengine_checkpoints() -> None:
    """Allow-list :func:`mmengine_safe_globals` for ``weights_only`` loading (idempotent)."""
    torch.serialization.add_safe_globals(mmengine_safe_globals())
