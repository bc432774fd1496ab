"""tools/dist_launch.sh (behind dist_train.sh and dist_test.sh): how torchrun rendezvous.

A worker script that only prints what torchrun gave it: two jobs started side by side on one
machine without PORT each get a port of their own (torchrun --standalone picks a free one);
PORT names the rendezvous port; the script gets ``--launcher pytorch``.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path

from tests.conftest import REPO

WORKER = """
import json, os, sys
line = json.dumps(dict(rank=os.environ['RANK'], world=os.environ['WORLD_SIZE'],
                       port=os.environ['MASTER_PORT'], argv=sys.argv[1:])) + '\\n'
os.write(1, line.encode())  # one write: the two ranks share the pipe (print writes twice)
"""


def launch(tmp_path: Path, **env_vars: str) -> subprocess.Popen:
    script = tmp_path / 'worker.py'
    script.write_text(WORKER)
    env = {k: v for k, v in os.environ.items() if k not in ('PORT', 'NNODES', 'MASTER_ADDR')}
    env.update(env_vars)
    return subprocess.Popen(['tools/dist_launch.sh', '2', str(script), '--flag'], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def workers(process: subprocess.Popen) -> list[dict]:
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr[-3000:]
    return sorted((json.loads(line) for line in stdout.splitlines() if line.startswith('{')),
                  key=lambda worker: worker['rank'])


def test_jobs_side_by_side_without_port_get_ports_of_their_own(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'b').mkdir()
    jobs = [launch(tmp_path / 'a'), launch(tmp_path / 'b')]
    first, second = (workers(job) for job in jobs)
    for job in (first, second):
        assert [(w['rank'], w['world']) for w in job] == [('0', '2'), ('1', '2')]
        assert job[0]['port'] == job[1]['port']
        assert all(w['argv'] == ['--flag', '--launcher', 'pytorch'] for w in job)
    assert first[0]['port'] != second[0]['port']


def test_port_names_the_rendezvous_port(tmp_path):
    with socket.socket() as sock:  # a port free right now
        sock.bind(('127.0.0.1', 0))
        port = str(sock.getsockname()[1])
    job = workers(launch(tmp_path, PORT=port))
    assert [(w['rank'], w['port']) for w in job] == [('0', port), ('1', port)]
