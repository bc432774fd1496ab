"""One training run per work_dir: a lock file held for the lifetime of the run's process.

``<work_dir>/.train.lock`` holds JSON naming the run that holds it (``pid``, ``host``,
``started``, ``command``), and the process keeps an exclusive POSIX lock
(``fcntl.lockf``) on it until it exits. A second trainer on the same work_dir finds the
lock taken and stops at once with :class:`WorkDirBusyError`, which names the other run.

- The kernel releases the lock when its process ends, however it ends. A lock file left
  by a killed run (``--resume`` after a crash) is therefore free to lock: it is recognised
  as stale, taken over, and a log line names the run that left it.
- A POSIX lock belongs to the process, not to the open file: children forked from the
  trainer (DataLoader workers, which notice the trainer's death only seconds later) do not
  hold it, so a killed run's lock is free at once. (``flock`` locks are shared with forked
  children.) The flip side: closing *any* descriptor of the lock file in the holding
  process would release it, so nothing but :meth:`WorkDirLock.release` opens it there.
- A normal exit removes the file (only the file this process wrote: the same inode).
- A process that already holds a work_dir's lock may take it again (a notebook that
  trains twice into one folder).
- POSIX locks work on local file systems and on NFS (the server arbitrates them between
  machines). On a file system without locks the run goes on unlocked, with a warning.
- Under DDP, rank 0 holds the lock (:func:`launcher_rank` tells the rank before the
  process group exists): it decides before the Runner (and any rank) writes into the
  work_dir; a refused rank 0 ends the job, and the launcher stops the other ranks.

Only training takes it. ``tools/test.py`` writes metrics and drawings into a work_dir that
a training run may still be using, which is normal in mmdet and mmseg.
"""
from __future__ import annotations

import atexit
import datetime
import errno
import fcntl
import json
import logging
import os
import shlex
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from mmengine.logging import print_log

#: The lock file's name inside the work_dir.
LOCK_NAME = '.train.lock'

#: Where each launcher puts the process's global rank before the process group exists.
RANK_VARIABLES = {'pytorch': 'RANK', 'slurm': 'SLURM_PROCID', 'mpi': 'OMPI_COMM_WORLD_RANK'}

_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkDirBusyError(RuntimeError):
    """The work_dir is in use by another training run."""


@dataclass
class WorkDirLock:
    """A held work_dir lock; :meth:`release` removes the file and releases the lock."""

    path: Path
    fd: int
    pid: int

    def release(self) -> None:
        """Remove the lock file (if it is still the one written here) and unlock it."""
        if self.fd < 0 or os.getpid() != self.pid:  # released, or a forked child's copy
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(self.fd)
            self.fd = -1
            _held.pop(str(self.path), None)


#: This process's held locks by lock file path.
_held: dict[str, WorkDirLock] = {}


def launcher_rank(launcher: str = 'none') -> int:
    """The process's global rank: torch.distributed's once it is initialised, else the
    launcher's environment variable (:data:`RANK_VARIABLES`), 0 without a launcher."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    variable = RANK_VARIABLES.get(launcher)
    return int(os.environ.get(variable, 0)) if variable else 0


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        on_disk, opened = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


def _parse_holder(data: bytes) -> dict:
    try:
        holder = json.loads(data)
    except ValueError:  # empty, or being written
        return {}
    return holder if isinstance(holder, dict) else {}


def _read_holder(path: Path) -> dict:
    """The holder named in another process's lock file ({} when it cannot be read)."""
    try:
        return _parse_holder(path.read_bytes())
    except OSError:  # removed meanwhile
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return 'a run whose lock file is being written'
    text = (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
            f"started {holder.get('started', '?')}")
    if holder.get('command'):
        text += f": {holder['command']}"
    return text


def _lock(path: Path) -> int | None:
    """Open and lock ``path`` without waiting: the fd, or None on a file system without
    locks (after a warning).

    Raises:
        BlockingIOError: another process holds the lock.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):  # POSIX allows either
                raise BlockingIOError(exc.errno, f'{path} is locked') from None
            if exc.errno not in _NO_LOCKS:
                raise
            print_log(f'{path}: this file system does not support file locks ({exc}); '
                      'training without a work_dir lock: another run could write into '
                      'this work_dir too', logger='current', level=logging.WARNING)
            return None
        # The holder removes the file at exit: a file opened just before that is no
        # longer the lock file, even though locking it succeeded. Try the new one.
        if _same_file(fd, path):
            return fd
        os.close(fd)


def acquire_work_dir_lock(work_dir: str | os.PathLike,
                          command: str | None = None) -> WorkDirLock | None:
    """Take ``<work_dir>/.train.lock`` for this process, or raise :class:`WorkDirBusyError`.

    Args:
        work_dir: the training run's work_dir (created if missing).
        command: what the lock file names as the run's command (default: this process's
            command line).

    Returns:
        The lock (released, and its file removed, at exit), or None on a file system
        without locks.
    """
    path = Path(work_dir).resolve() / LOCK_NAME
    if str(path) in _held:
        return _held[str(path)]
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = _lock(path)
    except BlockingIOError:
        raise WorkDirBusyError(
            f'{work_dir} is in use by another training run ({_describe(_read_holder(path))}). '
            f'Two runs in one work_dir would interleave their checkpoints and logs. Wait for '
            'that run to end (then --resume continues it), or train into another folder '
            f'(--work-dir DIR). The lock is {path}; it is freed when that process '
            'exits.') from None
    if fd is None:
        return None
    stale = _parse_holder(os.pread(fd, 1 << 16, 0))  # through fd: see the module docstring
    if stale:
        print_log(f'{path}: taking over the lock file of a run that no longer holds it '
                  f'({_describe(stale)}; it ended without removing it)', logger='current')
    holder = dict(pid=os.getpid(), host=socket.gethostname(),
                  started=datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
                  command=command if command is not None else shlex.join(
                      [sys.executable, *sys.argv]))
    data = (json.dumps(holder) + '\n').encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
    lock = WorkDirLock(path, fd, os.getpid())
    _held[str(path)] = lock
    atexit.register(lock.release)
    return lock


def lock_work_dir_for_training(work_dir: str | os.PathLike,
                               launcher: str = 'none') -> WorkDirLock | None:
    """Rank 0 takes the work_dir's lock (:func:`acquire_work_dir_lock`); other ranks don't."""
    if launcher_rank(launcher) != 0:
        return None
    return acquire_work_dir_lock(work_dir)


__all__ = ['LOCK_NAME', 'WorkDirBusyError', 'WorkDirLock', 'acquire_work_dir_lock',
           'launcher_rank', 'lock_work_dir_for_training']
