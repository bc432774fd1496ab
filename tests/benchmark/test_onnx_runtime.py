"""The ONNX Runtime section of docs/benchmarks.md survives tools/benchmark.py's rewrites."""
from __future__ import annotations

from convnext_dense.benchmark.onnx_runtime import (
    SECTION_END,
    SECTION_START,
    OnnxComparison,
    markdown,
    onnx_section,
    with_onnx_section,
)


def test_section_is_replaced_or_appended_and_found():
    section = f'{SECTION_START}\n## ONNX\n| a |\n{SECTION_END}\n'
    page = with_onnx_section('# Benchmarks\n\ntext\n', section)
    assert page == f'# Benchmarks\n\ntext\n\n{section}'
    assert onnx_section(page) == section
    newer = section.replace('| a |', '| b |')
    assert with_onnx_section(page, newer) == f'# Benchmarks\n\ntext\n\n{newer}'
    assert onnx_section('# no section\n') == ''


def test_markdown_row_has_the_ratio_and_operator_shares():
    result = OnnxComparison('configs/x.py', (512, 512), 2, torch_seconds=2.4, ort_seconds=2.0,
                            ort_op_share={'Conv': 0.8, 'MatMul': 0.1})
    row = markdown([result]).splitlines()[-1]
    assert row == ('| `x.py` | 512x512 | 2 | 2400 ms | 2000 ms | 1.20x | Conv 80%, MatMul 10% |')
