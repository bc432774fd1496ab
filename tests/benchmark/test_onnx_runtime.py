"""The exported-runtimes benchmark (ONNX Runtime and OpenVINO, fp32 and int8): timed without
the profiler; its section of the benchmark page survives tools/benchmark.py's rewrites;
neither tool writes the tracked page unless told."""
from __future__ import annotations

from pathlib import Path

import onnxruntime as ort
import pytest

from convnext_dense.benchmark.onnx_runtime import (
    DEFAULT_PAGE,
    SECTION_END,
    SECTION_START,
    OnnxComparison,
    benchmark_policy,
    compare,
    markdown,
    onnx_section,
    section_text,
    with_onnx_section,
)
from tests.conftest import REPO, load_tool


def test_section_is_replaced_or_appended_and_found():
    section = f'{SECTION_START}\n## ONNX\n| a |\n{SECTION_END}\n'
    page = with_onnx_section('# Benchmarks\n\ntext\n', section)
    assert page == f'# Benchmarks\n\ntext\n\n{section}'
    assert onnx_section(page) == section
    newer = section.replace('| a |', '| b |')
    assert with_onnx_section(page, newer) == f'# Benchmarks\n\ntext\n\n{newer}'
    assert onnx_section('# no section\n') == ''


def comparison() -> OnnxComparison:
    return OnnxComparison(
        'configs/x.py', (512, 512), 2, torch_seconds=2.4,
        seconds={'onnxruntime fp32': 2.0, 'onnxruntime int8': 0.8, 'openvino fp32': 1.6,
                 'openvino int8': 0.5},
        op_share={'onnxruntime fp32': {'Conv': 0.8, 'MatMul': 0.1},
                  'onnxruntime int8': {'QLinearConv': 0.6}},
        file_bytes={'fp32': 100, 'int8': 26}, int8_quantizes='backbone (the rest fp32)')


def test_markdown_rows_have_the_ratios_and_operator_shares():
    lines = markdown([comparison()]).splitlines()
    assert lines[2] == ('| `x.py` | 512x512 | 2 | 2400 ms | 2000 ms | 800 ms | 1600 ms | '
                        '500 ms | 1.50x (openvino) | 2.50x | 0.26 | backbone (the rest fp32) |')
    assert lines[-1] == '| `x.py` | Conv 80%, MatMul 10% | QLinearConv 60% |'


@pytest.mark.parametrize('config, modules, quantizes', [
    ('upernet_convnext_t_ade20k_512.py', None, 'every weighted operator: `--int8`'),
    ('mask_rcnn_convnext_t_coco.py', ('backbone', 'neck', 'rpn_head', 'mask_head'),
     'backbone + neck + rpn_head + mask_head (the rest fp32): `--int8`'),
    # --int8 refuses DINO: every weighted operator, said not to be --int8's
    ('dino_4scale_convnext_t_coco.py', None, 'every weighted operator: not `--int8`'),
])
def test_int8_rows_quantize_what_int8_export_quantizes(config, modules, quantizes):
    from convnext_dense.apis.runner import load_config
    policy, description = benchmark_policy(load_config(str(REPO / 'configs' / config)))
    assert (policy.depthwise, policy.modules) == (True, modules)
    assert description.startswith(quantizes)


def test_the_timed_session_runs_without_the_profiler(monkeypatch):
    """Only the separate profiling session, run after the timing, has the profiler on: the
    timed rounds pay no profiling overhead."""
    runs = []

    class RecordingSession(ort.InferenceSession):
        def run(self, *args, **kwargs):
            runs.append(self.get_session_options().enable_profiling)
            return super().run(*args, **kwargs)

    monkeypatch.setattr(ort, 'InferenceSession', RecordingSession)
    result = compare(str(REPO / 'configs/demo/upernet_convnext_demo.py'), (64, 64), threads=1,
                     reps=2, warmup=1, profile_runs=1)
    # calibration (4 random inputs, profiler off); per timed ONNX Runtime session (fp32,
    # int8): warm-up and 2 rounds; then fp32 and int8 profiled, once each
    assert runs == [False] * 4 + [False] * 6 + [True, True]
    assert set(result.seconds) == {'onnxruntime fp32', 'onnxruntime int8', 'openvino fp32',
                                   'openvino int8'}
    assert all(seconds > 0 for seconds in result.seconds.values())
    assert 'Conv' in result.op_share['onnxruntime fp32']
    assert any(op.startswith(('QLinear', 'MatMulInteger', 'ConvInteger'))
               for op in result.op_share['onnxruntime int8'])
    assert result.file_bytes['int8'] < 0.5 * result.file_bytes['fp32']


def test_section_says_how_it_was_measured_and_the_note():
    section = section_text([comparison()], 'python tools/benchmark_onnx.py', reps=5,
                           threads=2, note='Shared machine.')
    assert section.startswith(SECTION_START) and section.endswith(SECTION_END + '\n')
    assert 'the timed sessions without a profiler' in section
    assert 'interleaved rounds' in section
    assert 'in separate sessions' in section and section.count('Shared machine.') == 1
    assert onnx_section(section) == section


@pytest.mark.parametrize('tool', ['benchmark', 'benchmark_onnx'])
def test_the_tools_write_into_work_dirs_unless_out_names_a_file(tool):
    """The tracked docs/benchmarks.md is written only when --out names it."""
    module = load_tool(tool)
    assert module.parse_args([]).out == DEFAULT_PAGE == Path('work_dirs/benchmark/benchmarks.md')
    assert module.parse_args(['--out', 'docs/benchmarks.md']).out == Path('docs/benchmarks.md')
