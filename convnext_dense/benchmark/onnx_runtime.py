"""ONNX Runtime against PyTorch eager on the CPU, on the same exported computation.

Both sides run the graph of :mod:`convnext_dense.deploy` (the segmentors up to their decode
head's logits; the detectors with NMS, boxes and masks): PyTorch eager runs the module that
was exported, ONNX Runtime the exported file, with the same number of threads, alternating
rounds, one process; the timed ONNX Runtime session runs without its profiler. A second
session, with the profiler, says where ONNX Runtime's time goes, by operator type.
"""
from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..apis.models import build_model
from ..apis.runner import load_config
from ..deploy.export import export_graph, export_onnx, graph_inputs, require_onnx, task_of


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


def _session(ort, onnx_file: Path, threads: int, profile_prefix: str | None = None):
    """A CPU session with ``threads`` intra-op threads; the profiler on only with a prefix."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(onnx_file), options, providers=['CPUExecutionProvider'])


def compare(config: str, shape: tuple[int, int], threads: int = 2, reps: int = 5,
            warmup: int = 1, top_ops: int = 6, profile_runs: int = 2) -> OnnxComparison:
    """Time PyTorch eager and ONNX Runtime on one random-weight model of ``config``.

    The timed ONNX Runtime session runs without the profiler (its per-node timing is overhead
    that PyTorch's side would not pay); the operator shares come from a second session, with
    the profiler, run ``profile_runs`` times after the timing.
    """
    _, ort = require_onnx()
    options = {'model.backbone.init_cfg': None}
    cfg = load_config(config, options)
    torch.manual_seed(0)
    model = build_model(cfg)
    graph = export_graph(model, task_of(cfg)).eval()
    inputs = graph_inputs(task_of(cfg), torch.randn(1, 3, *shape))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / 'weights.pth'
        torch.save({'state_dict': model.state_dict()}, checkpoint)
        onnx_file = export_onnx(config, str(checkpoint), Path(tmp) / 'onnx', shape=shape,
                                cfg_options=options)
        session = _session(ort, onnx_file, threads)
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        feed = {name: value.numpy() for name, value in inputs.items()}
        torch_times, ort_times = [], []
        try:
            with torch.no_grad():
                for _ in range(warmup):
                    graph(*inputs.values())
                    session.run(None, feed)
                for _ in range(reps):  # alternate, so that drift hits both alike
                    start = time.perf_counter()
                    graph(*inputs.values())
                    torch_times.append(time.perf_counter() - start)
                    start = time.perf_counter()
                    session.run(None, feed)
                    ort_times.append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(previous_threads)
        del session
        profiled = _session(ort, onnx_file, threads, str(Path(tmp) / 'ort_profile'))
        for _ in range(profile_runs):
            profiled.run(None, feed)
        shares = _op_shares(profiled.end_profiling(), top_ops)
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


#: the page tools/benchmark.py and tools/benchmark_onnx.py write without --out (the tracked
#: docs/benchmarks.md only when --out names it)
DEFAULT_PAGE = Path('work_dirs/benchmark/benchmarks.md')
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


def section_text(results: list[OnnxComparison], command: str, reps: int, threads: int,
                 note: str = '') -> str:
    """The ONNX Runtime section of the benchmark page (markers included)."""
    _, ort = require_onnx()
    description = (
        f'`{command}`: random-weight models exported by `tools/export.py`; PyTorch eager runs '
        'the exported module, ONNX Runtime (CPU provider) the file, the same computation (the '
        "segmentors to their decode head's logits, the detectors with their post-processing), "
        f'batch 1, median of {reps} alternating rounds after one warm-up, {threads} threads '
        'each, the timed ONNX Runtime session without its profiler; torch '
        f'{torch.__version__}, onnxruntime {ort.__version__}, '
        f'{platform.processor() or platform.machine()}. The last column is ONNX Runtime\'s '
        'profiler, in a separate session: kernel time by operator type.')
    if note:
        description += f' {note}'
    return '\n'.join([SECTION_START, '## ONNX Runtime against PyTorch eager', '', description,
                      '', markdown(results).rstrip('\n'), SECTION_END, ''])


__all__ = ['DEFAULT_PAGE', 'OnnxComparison', 'SECTION_END', 'SECTION_START', 'compare', 'markdown',
           'onnx_section', 'section_text', 'with_onnx_section']
