"""Reading and writing checkpoint files safely.

Checkpoints come from the internet. They are read with
``torch.load(..., weights_only=True)`` or with safetensors, so a pickle that
would run code is refused, never executed. Files are written atomically: a
temporary file in the destination folder, then a rename.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import tempfile
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import torch


class CheckpointError(ValueError):
    """A checkpoint file cannot be read, recognised or converted."""


def is_url(path: str) -> bool:
    return urllib.parse.urlparse(str(path)).scheme in ('http', 'https', 'file')


def fetch(url: str) -> Path:
    """Download ``url`` into torch's hub cache (once) and return the local path."""
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / Path(urllib.parse.urlparse(url).path).name
    if not target.is_file():
        try:
            torch.hub.download_url_to_file(url, str(target), progress=False)
        except Exception as exc:  # network errors come in many types
            raise CheckpointError(f'{url}: download failed: {exc}') from exc
    return target


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.pth``/``.pt``/``.bin`` (weights only) or ``.safetensors`` file.

    Raises:
        CheckpointError: the file is missing, truncated, not a checkpoint, or
            holds pickled objects other than tensors and plain containers.
    """
    path_str = str(path)
    local = fetch(path_str) if is_url(path_str) else Path(path_str)
    if not local.exists():
        raise CheckpointError(f'{path_str}: no such file')
    if not local.is_file():
        raise CheckpointError(f'{path_str}: not a file')
    if local.suffix == '.safetensors':
        return _read_safetensors(local, path_str)
    try:
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


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_file(dst: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temporary file next to ``dst``; on success rename it to ``dst``.

    Readers never see a half-written ``dst``: a failure (or a kill) leaves the
    previous ``dst``, if any, as it was, and an exception removes the
    temporary file.
    """
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f'.{dst.name}.', suffix='.tmp', dir=dst.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_name, _default_file_mode())  # mkstemp creates 0600
        os.replace(tmp_name, dst)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_checkpoint_atomically(obj: dict[str, Any], dst: str | os.PathLike,
                                force: bool = False) -> Path:
    """``torch.save`` to a temporary file next to ``dst``, then rename it into place.

    An existing ``dst`` is kept unless ``force``; a failure leaves no file behind.
    """
    dst = Path(dst)
    if dst.exists() and not force:
        raise FileExistsError(f'{dst} exists; pass --force (force=True) to overwrite it')
    with atomic_file(dst) as f:
        torch.save(obj, f)
    return dst


def make_local_writes_atomic() -> None:
    """Make mmengine's local file backend write atomically (checkpoints included).

    mmengine saves checkpoints with ``LocalBackend.put``, which writes in
    place: a run killed while saving leaves a truncated ``epoch_N.pth``. With
    this, the file appears only once complete (idempotent).
    """
    from mmengine.fileio.backends import LocalBackend

    if getattr(LocalBackend.put, '_convnext_dense_atomic', False):
        return

    def put(self, obj: bytes, filepath: str | os.PathLike) -> None:
        with atomic_file(filepath) as f:
            f.write(obj)

    put.__doc__ = LocalBackend.put.__doc__
    put._convnext_dense_atomic = True
    LocalBackend.put = put
