"""Small helpers shared across the package: user-file safety and readable listings."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO


def refuse_overwrite(path: str | os.PathLike, force: bool, what: str = '') -> None:
    """Raise ``FileExistsError`` if ``path`` exists and ``force`` is not set.

    Nothing the user owns is overwritten silently: every writer that takes a
    destination (checkpoint conversion, exports, reports) calls this first.
    """
    if Path(path).exists() and not force:
        raise FileExistsError(f'{path}{f" ({what})" if what else ""} exists; '
                              'pass --force (force=True) to overwrite it')


def first_n_and_more(items: Sequence[str], n: int = 5, sep: str = ', ') -> str:
    """``'a, b, c and 7 more'``: the first ``n`` items, then how many were left out."""
    shown = sep.join(str(item) for item in items[:n])
    return shown + (f' and {len(items) - n} more' if len(items) > n else '')


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
