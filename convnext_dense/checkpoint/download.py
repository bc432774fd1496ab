"""Where a checkpoint given as a URL is read from: a verified download cache.

- ``http(s)://`` URLs are downloaded once into torch's hub cache
  (``$TORCH_HOME/hub/checkpoints``), under a name made of a digest of the *whole* URL
  and its base name, so two URLs that end in the same file name (every Hugging Face
  repository's ``model.safetensors``) never share an entry. Next to each file a small
  JSON record keeps the URL, size and SHA-256 written at download time; a cached file
  whose size or hash no longer matches (truncated, overwritten) is fetched again.
- ``file://`` URLs are local files: read in place, never copied, so a changed file is
  seen at once.
"""
from __future__ import annotations

import hashlib
import json
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from ..utils import atomic_file

URL_SCHEMES = ('http', 'https', 'file')
#: Characters of the URL's SHA-256 kept in a cache entry's name.
URL_DIGEST_CHARS = 16
_CHUNK = 1 << 20


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
    sha = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(_CHUNK), b''):
            sha.update(chunk)
    return sha.hexdigest()


def _record_path(target: Path) -> Path:
    return target.with_name(target.name + '.json')


def cached_file_is_valid(url: str, target: Path) -> bool:
    """True when ``target`` exists with the size and hash recorded when it was downloaded."""
    try:
        record = json.loads(_record_path(target).read_text())
        return (record.get('url') == url and target.stat().st_size == record['size']
                and file_sha256(target) == record['sha256'])
    except (OSError, ValueError, KeyError, TypeError):  # no file, no record, bad record
        return False


def download(url: str, target: Path) -> Path:
    """Download ``url`` to ``target`` (atomically) and record its size and hash."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=False)
    except Exception as exc:  # network errors come in many types
        raise DownloadError(f'{url}: download failed: {exc}') from exc
    record = dict(url=url, size=target.stat().st_size, sha256=file_sha256(target))
    with atomic_file(_record_path(target)) as f:
        f.write(json.dumps(record, indent=1).encode())
    return target


def local_path(path_or_url: str) -> Path:
    """The local file to read for a path or URL (downloading into the cache if needed)."""
    parsed = urllib.parse.urlparse(str(path_or_url))
    if parsed.scheme == 'file':
        return Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme not in ('http', 'https'):
        return Path(path_or_url)
    target = cache_path(path_or_url)
    if not cached_file_is_valid(path_or_url, target):
        download(path_or_url, target)
    return target
