"""The exported runtimes against PyTorch eager on the CPU, on the same exported computation.

Every side runs the graph of :mod:`convnext_dense.deploy` (the segmentors up to their decode
head's logits; the detectors with NMS, boxes and masks): PyTorch eager runs the module that was
exported; ONNX Runtime and OpenVINO (:mod:`convnext_dense.deploy.sessions`) run the fp32 file
and its int8 quantization (:mod:`convnext_dense.deploy.quantize`: QDQ, per-channel weights,
the operators ``tools/export.py --int8`` quantizes for the model type, every weighted operator
for a type it refuses; calibrated on four random inputs: the weights are random too), with
the same number of threads, in interleaved rounds (one round runs each runtime once), one
process; the timed sessions run without a profiler. Separate ONNX Runtime sessions with the
profiler, run after the timing, say where the fp32 and the int8 time goes, by operator type.
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
from typing import Any

import numpy as np
import torch

from ..apis.models import build_random_model
from ..apis.runner import load_config
from ..deploy.export import export_graph, export_onnx, graph_inputs, require_onnx, task_of
from ..deploy.quantize import QuantizationPolicy, int8_policy, quantize_file
from ..deploy.sessions import open_runtime_session, require_openvino

#: the timed exports: (runtime, precision)
RUNTIME_ROWS = (('onnxruntime', 'fp32'), ('onnxruntime', 'int8'), ('openvino', 'fp32'),
                ('openvino', 'int8'))
#: what the benchmark's int8 file quantizes for a model type ``--int8`` refuses (every
#: weighted operator), and on how many random inputs each int8 file is calibrated
BENCHMARK_POLICY = QuantizationPolicy(depthwise=True)
CALIBRATION_INPUTS = 4


def describe_policy(policy: QuantizationPolicy) -> str:
    """What ``policy`` quantizes, in words for the benchmark table."""
    text = ('every weighted operator' if policy.modules is None
            else f'{" + ".join(policy.modules)} (the rest fp32)')
    return text if policy.depthwise else text + ', depthwise convolutions fp32'


def benchmark_policy(cfg: Any) -> tuple[QuantizationPolicy, str]:
    """The policy ``tools/export.py --int8`` uses for ``cfg``'s model type, or
    :data:`BENCHMARK_POLICY` where ``--int8`` refuses the type; with its description."""
    policy = int8_policy(cfg)
    if policy is not None:
        return policy, f'{describe_policy(policy)}: `--int8`'
    return BENCHMARK_POLICY, (f'{describe_policy(BENCHMARK_POLICY)}: not `--int8` (refused '
                              'for this model type, its int8 accuracy unmeasured)')


def row_name(runtime: str, precision: str) -> str:
    return f'{runtime} {precision}'


@dataclass
class OnnxComparison:
    """Median seconds per image batch of PyTorch eager and each exported runtime, the files'
    sizes, and ONNX Runtime's top operators (fp32 and int8).

    Attributes:
        seconds: ``'onnxruntime fp32'``, ``'onnxruntime int8'``, ``'openvino fp32'``,
            ``'openvino int8'`` (:func:`row_name`) to median seconds.
        op_share: ``'onnxruntime fp32'``/``'onnxruntime int8'`` to {operator type: share of
            the kernel time}.
        file_bytes: ``'fp32'``/``'int8'`` to the size of ``end2end.onnx``.
        int8_quantizes: what the int8 file quantizes (:func:`benchmark_policy`).
    """

    config: str
    shape: tuple[int, int]
    threads: int
    torch_seconds: float
    seconds: dict[str, float] = field(default_factory=dict)
    op_share: dict[str, dict[str, float]] = field(default_factory=dict)
    file_bytes: dict[str, int] = field(default_factory=dict)
    int8_quantizes: str = ''

    @property
    def ort_seconds(self) -> float:
        return self.seconds[row_name('onnxruntime', 'fp32')]

    def speedup(self, name: str) -> float:
        """PyTorch eager's time over ``name``'s."""
        return self.torch_seconds / self.seconds[name]

    @property
    def best_fp32(self) -> str:
        return min((n for n in self.seconds if n.endswith('fp32')), key=self.seconds.get)

    @property
    def int8_over_fp32(self) -> float:
        """ONNX Runtime fp32's time over ONNX Runtime int8's."""
        return self.ort_seconds / self.seconds[row_name('onnxruntime', 'int8')]


def _op_shares(profile_file: str, top: int) -> dict[str, float]:
    events = json.loads(Path(profile_file).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get('cat') == 'Node' and event.get('name', '').endswith('_kernel_time'):
            totals[event['args'].get('op_name', '?')] += event.get('dur', 0)
    grand = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:top]
    return {name: value / grand for name, value in ranked}


def _profiled_session(ort, onnx_file: Path, threads: int, profile_prefix: str):
    """An ONNX Runtime CPU session with the profiler on."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(str(onnx_file), options, providers=['CPUExecutionProvider'])


def random_feeds(inputs: dict[str, torch.Tensor], count: int,
                 seed: int = 0) -> list[dict[str, np.ndarray]]:
    """``count`` feeds of the graph: standard normal images of the shape of ``inputs``'
    floating-point tensors, its other tensors (image shapes) as they are."""
    generator = np.random.default_rng(seed)
    return [{name: (generator.normal(size=value.shape).astype(np.float32)
                    if value.is_floating_point() else value.numpy())
             for name, value in inputs.items()} for _ in range(count)]


def int8_file(fp32_file: Path, out_dir: Path, inputs: dict[str, torch.Tensor],
              policy: QuantizationPolicy = BENCHMARK_POLICY) -> Path:
    """``fp32_file`` quantized by ``policy`` into ``out_dir`` (made here), calibrated on
    :data:`CALIBRATION_INPUTS` random inputs of the shape of ``inputs``."""
    out_dir.mkdir()
    quantize_file(fp32_file, out_dir / fp32_file.name,
                  iter(random_feeds(inputs, CALIBRATION_INPUTS)), policy)
    return out_dir / fp32_file.name


def compare(config: str, shape: tuple[int, int], threads: int = 2, reps: int = 5,
            warmup: int = 1, top_ops: int = 6, profile_runs: int = 2) -> OnnxComparison:
    """Time PyTorch eager and the exported runtimes (:data:`RUNTIME_ROWS`) on one random-weight
    model of ``config``, interleaved.

    The timed sessions run without a profiler (per-node timing is overhead that PyTorch's side
    would not pay); the operator shares come from separate ONNX Runtime sessions with the
    profiler, each run ``profile_runs`` times after the timing.
    """
    _, ort = require_onnx()
    require_openvino()
    options = {'model.backbone.init_cfg': None}
    cfg = load_config(config, options)
    model = build_random_model(cfg, seed=0)
    graph = export_graph(model, task_of(cfg)).eval()
    inputs = graph_inputs(task_of(cfg), torch.randn(1, 3, *shape))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / 'weights.pth'
        torch.save({'state_dict': model.state_dict()}, checkpoint)
        files = {'fp32': export_onnx(config, str(checkpoint), Path(tmp) / 'onnx', shape=shape,
                                     cfg_options=options)}
        policy, quantizes = benchmark_policy(cfg)
        files['int8'] = int8_file(files['fp32'], Path(tmp) / 'int8', inputs, policy)
        sessions = {row_name(runtime, precision): open_runtime_session(files[precision],
                                                                       runtime, threads)
                    for runtime, precision in RUNTIME_ROWS}
        previous_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        feed = {name: value.numpy() for name, value in inputs.items()}
        torch_times: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in sessions}
        try:
            with torch.no_grad():
                for _ in range(warmup):
                    graph(*inputs.values())
                    for session in sessions.values():
                        session.run(feed)
                for _ in range(reps):  # interleaved, so that drift hits all alike
                    start = time.perf_counter()
                    graph(*inputs.values())
                    torch_times.append(time.perf_counter() - start)
                    for name, session in sessions.items():
                        start = time.perf_counter()
                        session.run(feed)
                        times[name].append(time.perf_counter() - start)
        finally:
            torch.set_num_threads(previous_threads)
        del sessions
        shares = {}
        for precision in ('fp32', 'int8'):
            profiled = _profiled_session(ort, files[precision], threads,
                                         str(Path(tmp) / f'ort_profile_{precision}'))
            for _ in range(profile_runs):
                profiled.run(None, feed)
            shares[row_name('onnxruntime', precision)] = _op_shares(profiled.end_profiling(),
                                                                    top_ops)
        sizes = {precision: path.stat().st_size for precision, path in files.items()}
    return OnnxComparison(config, tuple(shape), threads, statistics.median(torch_times),
                          {name: statistics.median(values) for name, values in times.items()},
                          shares, sizes, quantizes)


def _ops(shares: dict[str, float]) -> str:
    return ', '.join(f'{name} {share:.0%}' for name, share in shares.items())


def markdown(results: list[OnnxComparison]) -> str:
    """The tables docs/benchmarks.md shows: times and ratios, then where ONNX Runtime's time
    goes."""
    names = [row_name(*row) for row in RUNTIME_ROWS]
    titles = [n.replace('onnxruntime', 'ONNX Runtime').replace('openvino', 'OpenVINO')
              for n in names]
    lines = ['| config | input | threads | PyTorch eager | ' + ' | '.join(titles)
             + ' | best fp32 / eager | ORT int8 speed-up over ORT fp32 | int8 file / fp32 '
             '| int8 quantizes |',
             '|---|---|---|---|' + '---|' * len(names) + '---|---|---|---|']
    for r in results:
        cells = ' | '.join(f'{r.seconds[n] * 1e3:.0f} ms' if n in r.seconds else '-'
                           for n in names)
        best = r.best_fp32
        lines.append(f'| `{Path(r.config).name}` | {r.shape[0]}x{r.shape[1]} | {r.threads} | '
                     f'{r.torch_seconds * 1e3:.0f} ms | {cells} | {r.speedup(best):.2f}x '
                     f'({best.split()[0]}) | {r.int8_over_fp32:.2f}x | '
                     f'{r.file_bytes["int8"] / r.file_bytes["fp32"]:.2f} | '
                     f'{r.int8_quantizes} |')
    lines += ['', '| config | ONNX Runtime fp32 time by operator | ONNX Runtime int8 time by '
              'operator |', '|---|---|---|']
    for r in results:
        lines.append(f'| `{Path(r.config).name}` | '
                     f'{_ops(r.op_share.get(row_name("onnxruntime", "fp32"), {}))} | '
                     f'{_ops(r.op_share.get(row_name("onnxruntime", "int8"), {}))} |')
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
    """The exported runtimes' section of the benchmark page (markers included)."""
    _, ort = require_onnx()
    ov = require_openvino()
    description = (
        f'`{command}`: random-weight models exported by `tools/export.py`; PyTorch eager runs '
        'the exported module, ONNX Runtime (CPU provider) and OpenVINO (CPU plugin, fp32 '
        'inference precision) the file, the same computation (the segmentors to their decode '
        "head's logits, the detectors with their post-processing); int8: the file quantized "
        'as `tools/export.py --int8` does (QDQ, per-channel int8 weights, uint8 activations; '
        'the operators of column *int8 quantizes*: `--int8`\'s choice for the model type, '
        f'every weighted operator where it refuses the type), calibrated on '
        f'{CALIBRATION_INPUTS} random inputs. Batch 1, '
        f'median of {reps} interleaved rounds (each round runs every runtime once) after one '
        f'warm-up, {threads} threads each, the timed sessions without a profiler; torch '
        f'{torch.__version__}, onnxruntime {ort.__version__}, openvino '
        f'{ov.get_version().split("-")[0]}, {platform.processor() or platform.machine()}. '
        'The operator tables are ONNX Runtime\'s profiler, in separate sessions: kernel time '
        'by operator type (`QLinearConv`, `MatMulInteger`, ...: the int8 kernels ONNX Runtime '
        'fuses the QDQ pairs into).')
    if note:
        description += f' {note}'
    return '\n'.join([SECTION_START, '## Exported runtimes against PyTorch eager', '',
                      description, '', markdown(results).rstrip('\n'), SECTION_END, ''])


__all__ = ['DEFAULT_PAGE', 'RUNTIME_ROWS', 'OnnxComparison', 'SECTION_END', 'SECTION_START',
           'benchmark_policy', 'compare', 'describe_policy', 'int8_file', 'markdown',
           'onnx_section', 'random_feeds', 'row_name', 'section_text', 'with_onnx_section']
