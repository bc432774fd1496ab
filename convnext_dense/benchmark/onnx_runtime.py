"""ONNX Runtime against PyTorch eager on the CPU, on the same exported computation.

Both sides run the graph of :mod:`convnext_dense.deploy` (the model with its
post-processing: the class map; NMS, boxes and masks): PyTorch eager runs the module that
was exported, ONNX Runtime the exported file, with the same number of threads, alternating
rounds, one process. ONNX Runtime's profiler says where its time goes, by operator type.
"""
from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..apis.models import build_model
from ..apis.runner import load_config
from ..deploy.export import export_graph, export_onnx, require_onnx, task_of


@dataclass
class OnnxComparison:
    """Median seconds per image batch of each runtime, and ONNX Runtime's top operators."""

    config: str
    shape: tuple[int, int]
    threads: int
    torch_seconds: float
    ort_seconds: float
    ort_op_share: dict[str, float] = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.torch_seconds / self.ort_seconds


def _op_shares(profile_file: str, top: int) -> dict[str, float]:
    events = json.loads(Path(profile_file).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get('cat') == 'Node' and event.get('name', '').endswith('_kernel_time'):
            totals[event['args'].get('op_name', '?')] += event.get('dur', 0)
    grand = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return {name: value / grand for name, value in ranked}


def compare(config: str, shape: tuple[int, int], threads: int = 2, reps: int = 5,
            warmup: int = 1, top_ops: int = 6) -> OnnxComparison:
    """Time PyTorch eager and ONNX Runtime on one random-weight model of ``config``."""
    _, ort = require_onnx()
    options = {'model.backbone.init_cfg': None}
    cfg = load_config(config, options)
    torch.manual_seed(0)
    model = build_model(cfg)
    graph = export_graph(model, task_of(cfg)).eval()
    inputs = torch.randn(1, 3, *shape)
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / 'weights.pth'
        torch.save({'state_dict': model.state_dict()}, checkpoint)
        onnx_file = export_onnx(config, str(checkpoint), Path(tmp) / 'onnx', shape=shape,
                                cfg_options=options)
        session_options = ort.SessionOptions()
        session_options.intra_op_num_threads = threads
        session_options.inter_op_num_threads = 1
        session_options.enable_profiling = True
        session_options.profile_file_prefix = str(Path(tmp) / 'ort_profile')
        session = ort.InferenceSession(str(onnx_file), session_options,
                                       providers=['CPUExecutionProvider'])
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        feed = {'input': inputs.numpy()}
        torch_times, ort_times = [], []
        try:
            with torch.no_grad():
                for _ in range(warmup):
                    graph(inputs)
                    session.run(None, feed)
                for _ in range(reps):  # alternate, so that drift hits both alike
                    start = time.perf_counter()
                    graph(inputs)
                    torch_times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    session.run(None, feed)
                    ort_times.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(previous_threads)
        shares = _op_shares(session.end_profiling(), top_ops)
    return OnnxComparison(config, tuple(shape), threads, statistics.median(torch_times),
                          statistics.median(ort_times), shares)


def markdown(results: list[OnnxComparison]) -> str:
    """The table docs/benchmarks.md shows."""
    lines = ['| config | input | threads | PyTorch eager | ONNX Runtime | ORT / eager speed | '
             'ONNX Runtime time by operator |', '|---|---|---|---|---|---|---|']
    for r in results:
        ops = ', '.join(f'{name} {share:.0%}' for name, share in r.ort_op_share.items())
        lines.append(f'| `{Path(r.config).name}` | {r.shape[0]}x{r.shape[1]} | {r.threads} | '
                     f'{r.torch_seconds * 1e3:.0f} ms | {r.ort_seconds * 1e3:.0f} ms | '
                     f'{r.speedup:.2f}x | {ops} |')
    return '\n'.join(lines) + '\n'


#: docs/benchmarks.md keeps this section between these markers; tools/benchmark.py, which
#: rewrites the rest of the page, carries it over.
SECTION_START = '<!-- onnx-runtime: written by tools/benchmark_onnx.py -->'
SECTION_END = '<!-- /onnx-runtime -->'


def onnx_section(text: str) -> str:
    """The ONNX Runtime section of a page (markers included), or ``''``."""
    start, end = text.find(SECTION_START), text.find(SECTION_END)
    if start < 0 or end < start:
        return ''
    return text[start:end + len(SECTION_END)] + '\n'


def with_onnx_section(text: str, section: str) -> str:
    """``text`` with its ONNX Runtime section replaced by ``section`` (appended if absent)."""
    old = onnx_section(text)
    if old:
        return text.replace(old, section)
    return text.rstrip('\n') + '\n\n' + section


__all__ = ['OnnxComparison', 'SECTION_END', 'SECTION_START', 'compare', 'markdown',
           'onnx_section', 'with_onnx_section']
