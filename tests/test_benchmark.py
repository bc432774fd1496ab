"""The benchmark: its official-design baseline, memory probe, and the tool end to end."""
from __future__ import annotations

import pytest
import torch

from convnext_dense.benchmark import (
    Variant,
    build_backbone,
    count_flops,
    official_convnext,
    peak_memory,
)
from tests.conftest import randomize_, relative_error, run_tool_process


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
