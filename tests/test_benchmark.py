"""The benchmark: its official-design baseline, memory probe, and the tool end to end."""
from __future__ import annotations

import os
import signal

import pytest
import torch

from convnext_dense.benchmark import (
    Settings,
    Variant,
    _variants,
    build_backbone,
    count_flops,
    official_convnext,
    peak_memory,
    run,
)
from tests.conftest import load_tool, randomize_, relative_error, run_tool_process


def test_official_baseline_matches_ours_on_the_same_weights():
    torch.manual_seed(0)
    ours = randomize_(build_backbone(Variant('ours'), 'atto'))
    official = official_convnext('atto')
    official.load_state_dict(ours.state_dict())
    assert type(official.stages[0][0]).__name__ == 'OfficialBlock'
    assert type(official.norm0).__name__ == 'OfficialLayerNorm'
    x = torch.randn(2, 3, 64, 96)
    grads = []
    for model in (ours, official):
        outs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        grads.append((outs, [p.grad for p in model.parameters()]))
    for a, b in zip(grads[0][0], grads[1][0]):
        assert relative_error(a, b) < 1e-5
    for a, b in zip(grads[0][1], grads[1][1]):
        assert relative_error(a, b) < 1e-4


def test_flops_of_a_training_step_are_three_forwards():
    forward = count_flops('tiny', 1, (224, 224), 'infer')
    assert 8.5e9 < forward < 9.5e9  # ConvNeXt-T: 4.5 GMACs at 224
    assert count_flops('tiny', 1, (224, 224), 'train') == 3 * forward


@pytest.mark.slow
def test_peak_memory_probe_runs_in_a_fresh_process():
    plain = peak_memory(Variant('ours'), 'atto', 2, (128, 128), 'train', torch.device('cpu'), 1)
    checkpointed = peak_memory(Variant('ours', ('with_cp',)), 'atto', 2, (128, 128), 'train',
                               torch.device('cpu'), 1)
    assert 0 < checkpointed < plain


@pytest.mark.slow
def test_benchmark_tool_writes_the_report(tmp_path):
    out = tmp_path / 'bench.md'
    result = run_tool_process('benchmark', '--archs', 'atto', '--sizes', '64', '--batches', '2',
                              '--reps', '1', '--threads', '1',
                              '--options', 'channels_last,with_cp,amp', '--option-sizes', '64',
                              '--memory-sizes', '64', '--detector-size', '128x160',
                              '--out', str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for expected in ('# Benchmarks', '## Machine', 'python tools/benchmark.py --archs atto',
                     '## Targets', '| atto | 64x64 | 2 | infer |', 'ours+channels_last',
                     'ours+with_cp', 'ours+amp', '## Where the time goes', '## Peak memory',
                     '## Whole detector', 'images/s'):
        assert expected in text, expected


def _tiny_settings(**changes) -> Settings:
    settings = Settings(archs=('atto',), sizes=((32, 32), (48, 48)), batches={}, arch_sizes={},
                        impls=('ours',), modes=('infer',), options=(), memory_sizes=(),
                        profile=False, detector_config=None, reps=1, budget_s=None, threads=1,
                        device='cpu')
    for name, value in changes.items():
        setattr(settings, name, value)
    return settings


def test_run_reports_progress_after_each_setting_and_rereads_the_ceiling():
    snapshots = []
    results = run(_tiny_settings(), lambda r: snapshots.append(
        (len(r.speed), len(r.matmul_samples), r.complete)))
    # one call per setting, then the final one; the ceiling is read at the start and after
    # each setting, and is the highest reading
    assert snapshots == [(1, 2, False), (2, 3, False), (2, 3, True)]
    assert results.matmul_gflops == max(results.matmul_samples) > 0


def test_benchmark_tool_stopped_by_sigterm_leaves_a_partial_report(tmp_path, monkeypatch):
    tool = load_tool('benchmark')
    real_run = tool.run

    def run_then_sigterm(settings, progress):
        def progress_then_stop(results):
            progress(results)
            os.kill(os.getpid(), signal.SIGTERM)  # what `timeout` sends
        return real_run(settings, progress_then_stop)

    monkeypatch.setattr(tool, 'run', run_then_sigterm)
    out = tmp_path / 'bench.md'
    handler_before = signal.getsignal(signal.SIGTERM)
    returncode = tool.main(['--archs', 'atto', '--sizes', '32,48', '--batches', '1', '1',
                            '--impls', 'ours', '--modes', 'infer', '--options', '', '--reps', '1',
                            '--budget', '0', '--threads', '1', '--no-memory', '--no-profile',
                            '--no-detector', '--device', 'cpu', '--out', str(out)])
    assert returncode == 130
    assert signal.getsignal(signal.SIGTERM) == handler_before
    text = out.read_text()
    assert '**Partial report**' in text
    assert '| atto | 32x32 | 1 | infer |' in text  # the setting measured before the stop
    assert '| atto | 48x48 |' not in text
    assert [p.name for p in tmp_path.iterdir()] == ['bench.md']  # no temporary file left


def test_gpu_only_options_are_skipped_on_a_cpu():
    settings = _tiny_settings(options=('channels_last', 'amp', 'amp_bf16'), option_arch='atto',
                              option_sizes=((32, 32),))
    names = [v.name for v in _variants(settings, 'atto', (32, 32), 'infer')]
    assert names == ['ours', 'ours+channels_last', 'ours+amp']
    settings.device = 'cuda'
    assert 'ours+amp_bf16' in [v.name for v in _variants(settings, 'atto', (32, 32), 'infer')]
