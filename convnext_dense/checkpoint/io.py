"""Reading and writing checkpoint files safely.

Checkpoints come from the internet. They are read with
``torch.load(..., weights_only=True)`` or with safetensors, so a pickle that
would run code is refused, never executed. Files are written atomically: a
temporary file in the destination folder, then a rename.
"""
from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path
from typing import Any

import torch

from ..utils import atomic_file, refuse_overwrite
from .download import DownloadError, local_path
from .errors import CheckpointError

#: Classes allowed in a weights-only read besides tensors and containers. The paper's
#: training scripts (ConvNeXt, ConvNeXt V2 incl. FCMAE pre-training) save their command line
#: as ``args``, an ``argparse.Namespace``: unpickling one only sets attributes.
SAFE_EXTRA_GLOBALS = (argparse.Namespace,)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.pth``/``.pt``/``.bin`` (weights only) or ``.safetensors`` file,
    or a Hugging Face model directory (``config.json`` and its weights, sharded or not).

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or
            holds pickled objects other than tensors and plain containers; a
            directory is not a ConvNeXt model directory.
    """
    path_str = str(path)
    try:
        local = local_path(path_str)
    except DownloadError as exc:
        raise CheckpointError(str(exc)) from exc
    if not local.exists():
        raise CheckpointError(f'{path_str}: no such file')
    if local.is_dir():
        from .layouts.huggingface import read_model_directory
        return read_model_directory(local, path_str, read_checkpoint)
    if not local.is_file():
        raise CheckpointError(f'{path_str}: not a file')
    if local.suffix == '.safetensors':
        return _read_safetensors(local, path_str)
    try:
        with torch.serialization.safe_globals(list(SAFE_EXTRA_GLOBALS)):
            obj = torch.load(local, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as exc:
        if 'Weights only load failed' in str(exc):
            unsafe = _unsafe_globals(local)
            raise CheckpointError(
                f'{path_str}: refused to load: the pickle references '
                f'{", ".join(unsafe) if unsafe else "objects"} that are not tensors or plain '
                'containers, and loading it could run code (read with weights_only=True). '
                'Re-save only the state dict from a trusted environment.') from None
        raise CheckpointError(f'{path_str}: not a PyTorch checkpoint ({exc})') from None
    except Exception as exc:  # the unpickler fails on garbage in many ways
        raise CheckpointError(f'{path_str}: truncated or not a PyTorch checkpoint '
                              f'({type(exc).__name__}: {str(exc).splitlines()[0]})') from None
    if not isinstance(obj, dict):
        raise CheckpointError(f'{path_str}: expected a dict of tensors (a state dict), '
                              f'got {type(obj).__name__}')
    return obj


def _unsafe_globals(path: Path) -> list[str]:
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # an unreadable file: the caller's message is enough
        return []


def _read_safetensors(local: Path, name: str) -> dict[str, Any]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        return load_file(str(local), device='cpu')
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f'{name}: truncated or not a safetensors file ({exc})') from None


def write_checkpoint_atomically(obj: dict[str, Any], dst: str | os.PathLike,
                                force: bool = False) -> Path:
    """``torch.save`` to a temporary file next to ``dst``, then rename it into place.

    An existing ``dst`` is kept unless ``force``; a failure leaves no file behind.
    """
    refuse_overwrite(dst, force)
    with atomic_file(dst) as f:
        torch.save(obj, f)
    return Path(dst)
