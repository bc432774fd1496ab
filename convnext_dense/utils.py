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


def _umask_from_proc() -> int | None:
    """The umask from ``/proc/self/status`` (Linux 4.7+), or None where it is not there."""
    try:
        with open('/proc/self/status', encoding='ascii') as status:
            for line in status:
                if line.startswith('Umask:'):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _umask_from_probe_file() -> int:
    """The umask as the mode a new file gets: a file created with mode 0o777 in the temporary
    folder, read back and removed (a default ACL on that folder would show as the umask)."""
    folder = tempfile.mkdtemp(prefix='.umask-probe.')
    probe = os.path.join(folder, 'probe')
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o777))
        return 0o777 & ~os.stat(probe).st_mode
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
        os.rmdir(folder)


def current_umask() -> int:
    """The process's umask, read without changing it.

    ``os.umask`` can only read the umask by setting it: between the two calls of
    ``os.umask(0); os.umask(old)``, every file another thread creates gets mode 0o666 (world
    writable). This reads ``/proc/self/status`` instead, or where that has no ``Umask`` line
    (not Linux, old kernels), the mode of a newly created file.
    """
    umask = _umask_from_proc()
    return _umask_from_probe_file() if umask is None else umask


def default_file_mode(directory: bool = False) -> int:
    """The mode ``open()`` (or ``mkdir``, with ``directory``) would give a new file here:
    ``0o666`` (``0o777``) less the umask. For files made by ``mkstemp``/``mkdtemp`` (0600/
    0700), which should look as if written in place once renamed."""
    return (0o777 if directory else 0o666) & ~current_umask()


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
        os.chmod(tmp_name, default_file_mode())  # mkstemp creates 0600
        os.replace(tmp_name, dst)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
