"""Checkpoint URLs: cached by the whole URL, verified on reuse, file:// read in place,
downloaded once by concurrent processes, with progress for large files."""
from __future__ import annotations

import hashlib
import http.server
import json
import multiprocessing
import os
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from convnext_dense.checkpoint import CheckpointError, read_checkpoint
from convnext_dense.checkpoint import download as download_module
from convnext_dense.checkpoint.download import cache_dir, cache_path, local_path


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (URL path -> bytes) and counts the requests per path.

    Paths in ``server.no_length`` are sent without Content-Length (the body ends when the
    connection closes). The first request of a path in ``server.held`` waits until a second
    request of it arrives, or ``server.hold_s`` seconds.
    """

    def do_GET(self):  # noqa: N802 (http.server's name)
        with self.server.lock:
            self.server.requests[self.path] += 1
            count = self.server.requests[self.path]
        if self.path in self.server.held:
            if count == 1:
                self.server.second_request.wait(self.server.hold_s)
            else:
                self.server.second_request.set()
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if self.path not in self.server.no_length:
            self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """An HTTP server on the loopback interface, stopped after the test."""
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Files)
    httpd.files, httpd.requests, httpd.lock = {}, Counter(), threading.Lock()
    httpd.no_length, httpd.held, httpd.hold_s = set(), set(), 2.0
    httpd.second_request = threading.Event()
    thread = threading.Thread(target=httpd.serve_forever, kwargs=dict(poll_interval=0.05),
                              daemon=True)
    thread.start()
    httpd.url = f'http://127.0.0.1:{httpd.server_address[1]}'
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def hub_dir(tmp_path, monkeypatch) -> Path:
    """A private torch hub folder, so the user's cache is never touched."""
    monkeypatch.setattr(torch.hub, '_hub_dir', str(tmp_path / 'hub'))
    return tmp_path / 'hub'


def checkpoint_bytes(tmp_path: Path, value: float) -> bytes:
    path = tmp_path / f'ckpt-{value}.pth'
    torch.save({'w': torch.full((3,), value)}, path)
    return path.read_bytes()


def test_urls_with_the_same_file_name_get_their_own_cache_entries(tmp_path, server):
    server.files['/org-a/model/resolve/main/model.pth'] = checkpoint_bytes(tmp_path, 1.0)
    server.files['/org-b/model/resolve/main/model.pth'] = checkpoint_bytes(tmp_path, 2.0)
    url_a = server.url + '/org-a/model/resolve/main/model.pth'
    url_b = server.url + '/org-b/model/resolve/main/model.pth'
    assert read_checkpoint(url_a)['w'].tolist() == [1.0] * 3
    assert read_checkpoint(url_b)['w'].tolist() == [2.0] * 3
    assert cache_path(url_a) != cache_path(url_b)
    assert cache_path(url_a).name.endswith('-model.pth')
    # Read again: both come from the cache, no new request.
    assert read_checkpoint(url_a)['w'].tolist() == [1.0] * 3
    assert read_checkpoint(url_b)['w'].tolist() == [2.0] * 3
    assert set(server.requests.values()) == {1}


@pytest.mark.parametrize('damage', ['truncate', 'same_size_other_bytes', 'no_record'])
def test_a_damaged_cache_entry_is_fetched_again(tmp_path, server, damage):
    server.files['/model.pth'] = checkpoint_bytes(tmp_path, 3.0)
    url = server.url + '/model.pth'
    cached = local_path(url)
    if damage == 'truncate':
        cached.write_bytes(cached.read_bytes()[:100])
    elif damage == 'same_size_other_bytes':
        data = bytearray(cached.read_bytes())
        data[-30] ^= 0xFF
        cached.write_bytes(bytes(data))
    else:
        cached.with_name(cached.name + '.json').unlink()
    assert read_checkpoint(url)['w'].tolist() == [3.0] * 3
    assert server.requests['/model.pth'] == 2


def test_file_urls_are_read_in_place_and_never_cached(tmp_path, hub_dir):
    path = tmp_path / 'local.pth'
    torch.save({'w': torch.zeros(2)}, path)
    assert read_checkpoint(path.as_uri())['w'].tolist() == [0.0, 0.0]
    torch.save({'w': torch.ones(2)}, path)  # the user retrains and overwrites it
    assert read_checkpoint(path.as_uri())['w'].tolist() == [1.0, 1.0]
    assert not cache_dir().exists() or not any(cache_dir().iterdir())


def test_a_failed_download_names_the_url_and_leaves_no_entry(server):
    url = server.url + '/missing.pth'
    with pytest.raises(CheckpointError, match=r'missing\.pth: download failed: .*404'):
        read_checkpoint(url)
    assert not cache_path(url).exists()


@pytest.fixture
def hash_calls(monkeypatch) -> list[Path]:
    """The files the download module hashes (a spy on its ``file_sha256``)."""
    calls: list[Path] = []
    real = download_module.file_sha256

    def spy(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(download_module, 'file_sha256', spy)
    return calls


def test_an_unchanged_entry_is_read_without_hashing_it(tmp_path, server, hash_calls):
    server.files['/model.pth'] = checkpoint_bytes(tmp_path, 4.0)
    url = server.url + '/model.pth'
    for _ in range(3):
        assert read_checkpoint(url)['w'].tolist() == [4.0] * 3
    assert hash_calls == []  # hashed while downloading, never re-read for a hash
    assert server.requests['/model.pth'] == 1


def test_an_entry_is_recorded_with_an_mtime_no_later_write_can_give_it(tmp_path, server):
    server.files['/model.pth'] = checkpoint_bytes(tmp_path, 7.0)
    url = server.url + '/model.pth'
    cached = local_path(url)
    recorded = json.loads(cached.with_name(cached.name + '.json').read_text())['mtime_ns']
    # Set MTIME_MARGIN_NS into the past: a write even within the same tick of a coarse
    # file system clock (1-2 s) moves the time, so the stat check sees it.
    assert recorded == cached.stat().st_mtime_ns
    assert recorded <= time.time_ns() - download_module.MTIME_MARGIN_NS
    data = bytearray(cached.read_bytes())
    data[-30] ^= 0xFF
    cached.write_bytes(bytes(data))
    assert cached.stat().st_mtime_ns > recorded
    assert read_checkpoint(url)['w'].tolist() == [7.0] * 3
    assert server.requests['/model.pth'] == 2


def test_an_entry_whose_mtime_changed_is_hashed_once_then_trusted(tmp_path, server, hash_calls):
    server.files['/model.pth'] = checkpoint_bytes(tmp_path, 5.0)
    url = server.url + '/model.pth'
    cached = local_path(url)
    stat = cached.stat()  # same bytes, new time: e.g. restored from a backup
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns + 3_000_000_000))
    assert local_path(url) == cached
    assert hash_calls == [cached]
    assert local_path(url) == cached
    assert hash_calls == [cached]  # the record took the new time
    assert server.requests['/model.pth'] == 1


def test_a_record_without_mtime_is_checked_by_hash_once_and_updated(tmp_path, server,
                                                                     hash_calls):
    server.files['/model.pth'] = checkpoint_bytes(tmp_path, 6.0)
    url = server.url + '/model.pth'
    cached = local_path(url)
    record_file = cached.with_name(cached.name + '.json')
    old_record = json.loads(record_file.read_text())
    old_record.pop('mtime_ns', None)  # as written before records kept the time
    record_file.write_text(json.dumps(old_record))
    assert read_checkpoint(url)['w'].tolist() == [6.0] * 3
    assert hash_calls == [cached]
    assert json.loads(record_file.read_text())['mtime_ns'] == cached.stat().st_mtime_ns
    assert read_checkpoint(url)['w'].tolist() == [6.0] * 3
    assert hash_calls == [cached]
    assert server.requests['/model.pth'] == 1


def _read_in_child(url: str, barrier, results) -> None:
    """Wait for the other child, then read ``url`` through the cache; report its hash."""
    try:
        barrier.wait(timeout=60)
        results.put(download_module.file_sha256(local_path(url)))
    except BaseException as exc:  # reported to the test, not lost in the child
        results.put(repr(exc))


def test_concurrent_processes_download_a_url_once(server):
    body = os.urandom(3 * (1 << 20) + 5)  # a few chunks
    server.files['/shared.pth'] = body
    # The first request is answered only once a second one arrives (or after 2 s): a second
    # process that does not wait for the first one's download is caught requesting it too.
    server.held.add('/shared.pth')
    url = server.url + '/shared.pth'
    context = multiprocessing.get_context('fork')  # the children share the test's hub dir
    barrier, results = context.Barrier(2), context.Queue()
    children = [context.Process(target=_read_in_child, args=(url, barrier, results))
                for _ in range(2)]
    for child in children:
        child.start()
    reported = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert reported == [hashlib.sha256(body).hexdigest()] * 2
    assert server.requests['/shared.pth'] == 1


def test_large_downloads_and_those_of_unknown_size_show_progress(server, monkeypatch, capsys):
    monkeypatch.setattr(download_module, 'PROGRESS_MIN_BYTES', 4096)
    server.files['/small.bin'] = b'x' * 4095
    server.files['/large.bin'] = b'y' * 10240
    server.files['/stream.bin'] = b'z' * 100
    server.no_length.add('/stream.bin')
    local_path(server.url + '/small.bin')
    assert capsys.readouterr().err == ''
    local_path(server.url + '/large.bin')
    err = capsys.readouterr().err
    assert f'Downloading {server.url}/large.bin to {cache_path(server.url + "/large.bin")} ' \
           '(10.0 KiB)' in err
    assert '10.0 KiB / 10.0 KiB (100%), ' in err
    assert local_path(server.url + '/stream.bin').read_bytes() == b'z' * 100
    err = capsys.readouterr().err
    assert f'Downloading {server.url}/stream.bin' in err and '(size unknown)' in err
    assert '\n100 B, ' in err
