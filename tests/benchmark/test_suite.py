"""A benchmark run and the tool end to end."""
from __future__ import annotations

import os
import signal

import pytest

from convnext_dense.benchmark import suite
from convnext_dense.benchmark.report import render_markdown
from convnext_dense.benchmark.suite import Settings, run, setting_variants
from tests.conftest import load_tool, run_tool_process


@pytest.mark.slow
def test_benchmark_tool_writes_the_report(tmp_path):
    out = tmp_path / 'bench.md'
    # Every section of the report, each on its smallest setting: inference only, ours and
    # mmpretrain's (from the overlay, in the tool's process and in the memory probes; each
    # peak-memory reading is two fresh processes; the official baseline's model:
    # test_baselines.py, its columns: test_report.py), one whole-model pair (both pairs' models
    # and losses: tests/benchmark/test_whole_models.py).
    result = run_tool_process('benchmark', '--archs', 'atto', '--sizes', '64', '--batches', '2',
                              '--impls', 'ours,mmpretrain', '--modes', 'infer',
                              '--reps', '1', '--threads', '1',
                              '--options', 'channels_last,with_cp,amp', '--option-sizes', '64',
                              '--memory-sizes', '64', '--detector-size', '128x160',
                              '--whole-models', 'upernet', '--whole-sizes', 'upernet=64x64',
                              '--whole-reps', '1', '--out', str(out), timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    text = out.read_text()
    for expected in ('# Benchmarks', '## Machine', 'python tools/benchmark.py --archs atto',
                     '## Targets', '| atto | 64x64 | 2 | infer |',
                     'ours+channels_last', 'ours+with_cp', 'ours+amp', '## Where the time goes',
                     '## Peak memory', '## Whole detector', 'images/s',
                     # mmpretrain from the overlay (make setup), in the tool's own process
                     'mmpretrain img/s', '| 64x64 | 2 | mmpretrain |',
                     "## Whole models: training step, this backbone against mmpretrain's",
                     '| UperNet-T | `configs/upernet_convnext_t_ade20k_512.py` |',
                     '| 64x64 | 2 | 1 |',
                     'whole UperNet-T training step >= 1.00x the mmpretrain-backbone config'):
        assert expected in text, expected
    assert 'Skipped' not in text and 'Mask R-CNN-T |' not in text
    assert 'timm img/s' not in text and 'official img/s' not in text


def _tiny_settings(**changes) -> Settings:
    settings = Settings(archs=('atto',), sizes=((32, 32), (48, 48)), batches={}, arch_sizes={},
                        impls=('ours',), modes=('infer',), options=(), memory_sizes=(),
                        profile=False, detector_config=None, whole_models=(), reps=1,
                        budget_s=None, threads=1, device='cpu', mmpretrain_overlay=None)
    for name, value in changes.items():
        setattr(settings, name, value)
    return settings


def test_run_reports_progress_after_each_setting_and_rereads_the_ceiling(monkeypatch):
    readings = iter([50.0, 90.0, 70.0])
    monkeypatch.setattr(suite, 'matmul_gflops', lambda device, reps=5: next(readings))
    snapshots = []
    results = run(_tiny_settings(), lambda r: snapshots.append(
        (len(r.speed), len(r.matmul_samples), r.complete)))
    # one call per setting, then the final one; the ceiling is read at the start and after
    # each setting, and is the highest reading
    assert snapshots == [(1, 2, False), (2, 3, False), (2, 3, True)]
    assert results.matmul_samples == [50.0, 90.0, 70.0]
    assert results.matmul_gflops == 90.0
    assert [(row.size, row.variant, row.reps) for row in results.speed] == [
        ((32, 32), 'ours', 1), ((48, 48), 'ours', 1)]


def test_run_without_mmpretrain_says_not_installed(mmpretrain_missing):
    results = run(_tiny_settings(sizes=((32, 32),), impls=('ours', 'mmpretrain')))
    assert results.skipped == ['mmpretrain: not installed']
    assert [row.variant for row in results.speed] == ['ours']
    assert 'Skipped: mmpretrain: not installed' in render_markdown(results, 'cmd')


def test_run_with_a_broken_mmpretrain_says_so(broken_mmpretrain, capsys):
    broken_mmpretrain("raise TypeError('what transformers 5 does to mmpretrain 1.2.0')")
    results = run(_tiny_settings(sizes=((32, 32),), impls=('ours', 'mmpretrain')))
    line = ('mmpretrain is installed but fails to import: '
            'TypeError: what transformers 5 does to mmpretrain 1.2.0')
    assert results.skipped == [line]
    assert line in capsys.readouterr().err
    assert [row.variant for row in results.speed] == ['ours']
    text = render_markdown(results, 'cmd')
    assert f'Skipped: {line}' in text
    assert 'mmpretrain img/s' not in text
    assert 'not installed' not in text.split('Command:')[1]


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
                            '--no-detector', '--whole-models', '', '--device', 'cpu',
                            '--out', str(out)])
    assert returncode == 130
    assert signal.getsignal(signal.SIGTERM) == handler_before
    text = out.read_text()
    assert '**Partial report**' in text
    assert '| atto | 32x32 | 1 | infer |' in text  # the setting measured before the stop
    assert '| atto | 48x48 |' not in text
    assert [p.name for p in tmp_path.iterdir()] == ['bench.md']  # no temporary file left


def test_tool_arguments_reach_the_settings():
    tool = load_tool('benchmark')
    settings = tool.settings_from_args(tool.parse_args([
        '--archs', 'T,atto', '--sizes', '64,32x48', '--batches', '2', '3', '--impls',
        'ours,official', '--modes', 'train', '--options', 'with_cp', '--option-sizes', '64',
        '--no-memory', '--no-detector', '--no-profile', '--budget', '0', '--reps', '2',
        '--warmup', '0', '--threads', '1', '--device', 'cpu', '--whole-models', 'upernet',
        '--whole-sizes', 'upernet=256x384', '--whole-batches', 'mask_rcnn=2', '--whole-reps', '3',
        '--mmpretrain-overlay', '/somewhere/overlay']))
    assert settings.archs == ('tiny', 'atto')
    assert settings.sizes == ((64, 64), (32, 48))
    assert settings.batches == {(64, 64): 2, (32, 48): 3}
    assert settings.sizes_of('atto') == ((64, 64), (32, 48))
    assert (settings.impls, settings.modes, settings.options) == (
        ('ours', 'official'), ('train',), ('with_cp',))
    assert settings.option_sizes == settings.compile_sizes == ((64, 64),)
    assert (settings.memory_sizes, settings.detector_config, settings.profile) == ((), None, False)
    assert (settings.budget_s, settings.reps, settings.warmup, settings.threads) == (None, 2, 0, 1)
    assert settings.whole_models == ('upernet',)
    assert settings.whole_sizes == {'mask_rcnn': (640, 640), 'upernet': (256, 384)}
    assert settings.whole_batches == {'mask_rcnn': 2, 'upernet': 2}
    assert (settings.whole_reps, settings.mmpretrain_overlay) == (3, '/somewhere/overlay')
    quick = tool.settings_from_args(tool.parse_args(['--quick']))
    assert (quick.archs, quick.budget_s) == (('tiny',), 10.0)
    assert quick.whole_models == ('mask_rcnn', 'upernet')
    none = tool.settings_from_args(tool.parse_args(['--whole-models', '',
                                                    '--mmpretrain-overlay', '']))
    assert (none.whole_models, none.mmpretrain_overlay) == ((), None)
    with pytest.raises(SystemExit):
        tool.parse_args(['--whole-sizes', 'cascade=800x1333'])


def test_gpu_only_options_are_skipped_on_a_cpu():
    settings = _tiny_settings(options=('channels_last', 'amp', 'amp_bf16'), option_arch='atto',
                              option_sizes=((32, 32),))
    names = [v.name for v in setting_variants(settings, 'atto', (32, 32), 'infer')]
    assert names == ['ours', 'ours+channels_last', 'ours+amp']
    settings.device = 'cuda'
    assert 'ours+amp_bf16' in [v.name for v in setting_variants(settings, 'atto', (32, 32),
                                                                  'infer')]
