"""Checkpoint URLs: cached by the whole URL, verified on reuse, file:// read in place."""
from __future__ import annotations

import http.server
import threading
from collections import Counter
from pathlib import Path

import pytest
import torch

from convnext_dense.checkpoint import CheckpointError, read_checkpoint
from convnext_dense.checkpoint.download import cache_dir, cache_path, local_path


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files`` (URL path -> bytes) and counts the requests per path."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.requests[self.path] += 1
        body = self.server.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    """An HTTP server on the loopback interface, stopped after the test."""
    httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Files)
    httpd.files, httpd.requests = {}, Counter()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
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
