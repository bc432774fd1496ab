"""Where a checkpoint given as a URL is read from: a verified download cache.

- ``http(s)://`` URLs are downloaded once into torch's hub cache
  (``$TORCH_HOME/hub/checkpoints``), under a name made of a digest of the *whole* URL
  and its base name, so two URLs that end in the same file name (every Hugging Face
  repository's ``model.safetensors``) never share an entry.
- Next to each entry a small JSON record keeps the URL, size, SHA-256 and modification
  time (``mtime_ns``) written at download time. A read compares the entry's size and
  modification time with the record (one ``stat``, no read of the file); only when one of
  them changed is the file hashed again: a file whose size or hash no longer matches
  (truncated, overwritten) is fetched again, one that still matches gets its record
  updated. Records written without ``mtime_ns`` are checked by hash once and updated.
  The cache sets an entry's modification time to :data:`MTIME_MARGIN_NS` before the
  moment it records it, so that any later write to the file moves the time, even on a
  file system that stores times in whole seconds. (A bit flip on disk changes neither
  size nor time: as for ``make`` or ``rsync``, that is not looked for.)
- One process downloads: the download holds an exclusive lock (``fcntl.flock``) on
  ``<entry>.lock``. Other processes that need the same URL at the same time (DDP ranks on
  a cold cache, parallel jobs on one machine or on one NFS cache) wait for the lock, then
  find the entry valid and read it. The ``.lock`` files stay in the cache (removing a lock
  file that another process may be about to lock is unsafe); they are empty.
- Downloads of :data:`PROGRESS_MIN_BYTES` or more, or of unknown size, print their
  progress on stderr (bytes, total, rate).
- ``file://`` URLs are local files: read in place, never copied, so a changed file is
  seen at once.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import torch

from ..utils import atomic_file

URL_SCHEMES = ('http', 'https', 'file')
#: Characters of the URL's SHA-256 kept in a cache entry's name.
URL_DIGEST_CHARS = 16
#: Downloads at least this large (or of unknown size) show their progress on stderr.
PROGRESS_MIN_BYTES = 10 * 1024 * 1024
#: How far before the recording moment a cached entry's modification time is set (2 s: the
#: coarsest file system time resolution in use, FAT's).
MTIME_MARGIN_NS = 2_000_000_000
#: Seconds a stalled connection may stay silent before the download fails.
TIMEOUT_S = 60
_CHUNK = 1 << 20
_USER_AGENT = 'convnext_dense'


class DownloadError(OSError):
    """A checkpoint URL could not be downloaded."""


def is_url(path: str) -> bool:
    """True for the URL schemes :func:`local_path` resolves."""
    return urllib.parse.urlparse(str(path)).scheme in URL_SCHEMES


def cache_dir() -> Path:
    """torch's hub checkpoint folder (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / 'checkpoints'


def cache_path(url: str) -> Path:
    """The cache entry of ``url``: ``<digest of the whole URL>-<base name>``."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:URL_DIGEST_CHARS]
    name = Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name or 'checkpoint'
    return cache_dir() / f'{digest}-{name}'


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's contents (read in 1 MiB chunks)."""
    sha = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            sha.update(chunk)
    return sha.hexdigest()


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + '.json')


def _read_record(url: str, target: Path) -> dict | None:
    """The entry's record if it is one for ``url`` with a size and hash, else None."""
    try:
        record = json.loads(_record_path(target).read_text())
    except (OSError, ValueError):  # no record, unreadable, not JSON
        return None
    if (not isinstance(record, dict) or record.get('url') != url
            or not isinstance(record.get('size'), int)
            or not isinstance(record.get('sha256'), str)):
        return None
    return record


def _write_record(url: str, target: Path, size: int, sha256: str) -> None:
    """Set the entry's mtime to :data:`MTIME_MARGIN_NS` ago and record it with size and hash.

    A file owned by another user keeps its mtime (only its owner may set it), and the
    record then keeps the mtime it has.
    """
    stamp = time.time_ns() - MTIME_MARGIN_NS
    with contextlib.suppress(OSError):
        os.utime(target, ns=(stamp, stamp))
    record = dict(url=url, size=size, sha256=sha256, mtime_ns=target.stat().st_mtime_ns)
    with atomic_file(_record_path(target)) as f:
        f.write(json.dumps(record, indent=1).encode())


def _unchanged_since_recorded(url: str, target: Path) -> bool:
    """True when the entry has the size and mtime of its record (a ``stat``, no read)."""
    record = _read_record(url, target)
    try:
        stat = target.stat()
    except OSError:
        return False
    return (record is not None and stat.st_size == record['size']
            and stat.st_mtime_ns == record.get('mtime_ns'))


def cached_file_is_valid(url: str, target: Path) -> bool:
    """True when ``target`` holds what was downloaded from ``url``.

    Size and mtime equal to the record's: valid without reading the file. Otherwise the
    file is hashed: the recorded size and SHA-256 make it valid (and the record is updated,
    so the next read needs no hash again), anything else does not.
    """
    if _unchanged_since_recorded(url, target):
        return True
    record = _read_record(url, target)
    try:
        if record is None or target.stat().st_size != record['size']:
            return False
        if file_sha256(target) != record['sha256']:
            return False
    except OSError:
        return False
    with contextlib.suppress(OSError):  # a read-only cache stays valid, only unrecorded
        _write_record(url, target, record['size'], record['sha256'])
    return True


@contextlib.contextmanager
def _entry_lock(target: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``<target>.lock`` (waiting for it).

    A cache folder where the lock file cannot be created (read-only) is used unlocked:
    nothing can be downloaded into it anyway, and reading needs no lock.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(target.with_name(target.name + '.lock'),
                     os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            sys.stderr.write(f'Waiting for another process to download {target.name} '
                             f'(it holds {target.name}.lock in {target.parent})\n')
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _size(num_bytes: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if num_bytes < 1024 or unit == 'GiB':
            return f'{num_bytes:.0f} {unit}' if unit == 'B' else f'{num_bytes:.1f} {unit}'
        num_bytes /= 1024
    raise AssertionError('unreachable')


class _Progress:
    """One stderr line per update: bytes so far, total and percentage when known, rate.

    On a terminal the line is redrawn in place (5 times a second at most); in a log file a
    line is written every 10 seconds and at the end.
    """

    def __init__(self, url: str, target: Path, total: int | None, stream: TextIO) -> None:
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.start = self.last = time.monotonic()
        stream.write(f'Downloading {url} to {target} '
                     f'({_size(total) if total is not None else "size unknown"})\n')
        stream.flush()

    def update(self, done: int, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self.last < (0.2 if self.tty else 10):
            return
        self.last = now
        line = _size(done)
        if self.total:
            line += f' / {_size(self.total)} ({100 * done / self.total:.0f}%)'
        line += f', {_size(done / max(now - self.start, 1e-6))}/s'
        if self.tty:
            self.stream.write('\r' + line + ('\n' if final else ''))
        else:
            self.stream.write(line + '\n')
        self.stream.flush()


def _content_length(response) -> int | None:
    value = response.headers.get('Content-Length')
    return int(value) if value is not None and value.strip().isdigit() else None


def download(url: str, target: Path) -> Path:
    """Download ``url`` to ``target`` (atomically, hashing as it goes) and record it.

    Call it holding the entry's lock (:func:`local_path` does).
    """
    request = urllib.request.Request(url, headers={'User-Agent': _USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            total = _content_length(response)
            progress = (_Progress(url, target, total, sys.stderr)
                        if total is None or total >= PROGRESS_MIN_BYTES else None)
            sha, size = hashlib.sha256(), 0
            with atomic_file(target) as f:
                while chunk := response.read(_CHUNK):
                    f.write(chunk)
                    sha.update(chunk)
                    size += len(chunk)
                    if progress:
                        progress.update(size)
                if total is not None and size != total:
                    raise DownloadError(f'the connection closed after {size} of {total} bytes')
            if progress:
                progress.update(size, final=True)
    except Exception as exc:  # network errors come in many types
        raise DownloadError(f'{url}: download failed: {exc}') from exc
    _write_record(url, target, size, sha.hexdigest())
    return target


def local_path(path_or_url: str) -> Path:
    """The local file to read for a path or URL (downloading into the cache if needed).

    Concurrent callers for one URL download it once: the first takes the entry's lock and
    downloads, the others wait for the lock and find the entry valid.
    """
    parsed = urllib.parse.urlparse(str(path_or_url))
    if parsed.scheme == 'file':
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme not in ('http', 'https'):
        return Path(path_or_url)
    target = cache_path(path_or_url)
    if _unchanged_since_recorded(path_or_url, target):
        return target
    with _entry_lock(target):
        if not cached_file_is_valid(path_or_url, target):  # again: another may have fetched it
            download(path_or_url, target)
    return target
