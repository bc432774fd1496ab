"""How the benchmark measures: steps, interleaved timing, FLOPs, the matrix-multiply ceiling,
profiles, and peak memory in a fresh process.

Peak memory runs ``python -m convnext_dense.benchmark.measure SPEC`` (CPU: the rise of the
resident set over the step, from ``/proc/self/status`` ``VmHWM`` after resetting it; CUDA:
``max_memory_allocated``).
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from time import perf_counter

import torch
from torch import nn

from .baselines import Variant, build_backbone, make_input, mmpretrain_status, official_convnext

MODES = ('infer', 'train')


def make_step(variant: Variant, model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    """One inference (``no_grad``) or training step (forward + backward) of ``model`` on ``x``."""
    runner = torch.compile(model) if 'compile' in variant.options else model
    bf16 = x.device.type == 'cpu' or 'amp_bf16' in variant.options
    amp_dtype = torch.bfloat16 if bf16 else torch.float16
    use_amp = 'amp' in variant.options or 'amp_bf16' in variant.options

    def forward() -> tuple[torch.Tensor, ...]:
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=use_amp):
            return runner(x)

    if mode == 'infer':
        model.eval()

        def step() -> None:
            with torch.no_grad():
                forward()
    elif mode == 'train':
        model.train()

        def step() -> None:
            model.zero_grad(set_to_none=True)  # as optimizers do by default
            outs = forward()
            loss = sum(out.float().mean() for out in outs)
            loss.backward()
    else:
        raise ValueError(f'mode must be one of {", ".join(MODES)}, got {mode!r}')
    return step


def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_interleaved(steps: dict[str, Callable[[], None]], warmup: int, reps: int,
                     device: torch.device, budget_s: float | None = None,
                     min_reps: int = 3) -> dict[str, list[float]]:
    """Seconds per step of each callable: ``warmup`` untimed calls each, then rounds of one
    call each in turn.

    ``reps`` rounds, or with ``budget_s`` as many as fit in that time by the last warm-up
    round's duration, at least ``min_reps`` and at most ``reps``.
    """
    round_s = 0.0
    for step in steps.values():
        for i in range(warmup):
            start = perf_counter()
            step()
            _sync(device)
            if i == warmup - 1:
                round_s += perf_counter() - start
    if budget_s is not None and round_s > 0:
        reps = max(min(min_reps, reps), min(reps, int(budget_s / round_s)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            _sync(device)
            start = perf_counter()
            step()
            _sync(device)
            times[name].append(perf_counter() - start)
    return times


def count_flops(arch: str, batch: int, size: tuple[int, int], mode: str) -> int:
    """FLOPs (2 per multiply-add) of one step: the forward's, three times that for training.

    The forward is counted with torch's FLOP counter on the meta device, on the official
    design (every implementation computes the same products). A backward costs twice the
    forward (input and weight gradients), the usual convention; it is not counted by torch,
    whose counter ignores groups in a convolution's backward and so counts the depthwise
    weight gradients as dense convolutions (nearly 3x the true training FLOPs).
    """
    if mode not in MODES:
        raise ValueError(f'mode must be one of {", ".join(MODES)}, got {mode!r}')
    from torch.utils.flop_counter import FlopCounterMode
    model = official_convnext(arch).to('meta')
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(batch, 3, *size, device='meta'))
    return counter.get_total_flops() * (1 if mode == 'infer' else 3)


def matmul_size(device_type: str) -> int:
    """Side of the square fp32 product that measures a device's matrix-multiply ceiling."""
    return 2048 if device_type == 'cpu' else 8192


def matmul_gflops(device: torch.device, n: int | None = None, reps: int = 5) -> float:
    """Measured fp32 matrix-multiply throughput (GFLOP/s): median of ``reps`` n x n products
    (n: :func:`matmul_size`, large enough to reach the device's rate)."""
    n = n or matmul_size(device.type)
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    times = time_interleaved({'mm': lambda: torch.mm(a, b)}, warmup=2, reps=reps,
                             device=device)['mm']
    return 2 * n ** 3 / statistics.median(times) / 1e9


#: Profiler op names (prefixes) by category, for where a step's time goes.
PROFILE_CATEGORIES = (
    ('matrix multiply', ('aten::mm', 'aten::addmm', 'aten::bmm', 'mkldnn::_linear_pointwise')),
    ('convolution', ('aten::mkldnn_convolution', 'aten::convolution_backward',
                     'aten::_convolution', 'aten::thnn_conv', 'aten::_slow_conv')),
    ('GELU', ('aten::gelu',)),
    ('LayerNorm (fused)', ('aten::native_layer_norm',)),
    ('copies', ('aten::copy_', 'aten::contiguous', 'aten::clone')),
)


def profile_step(step: Callable[[], None]) -> dict[str, float]:
    """Self CPU time (ms) of one step by category of :data:`PROFILE_CATEGORIES`, and 'other'."""
    from torch.profiler import ProfilerActivity, profile
    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    times = {name: 0.0 for name, _ in PROFILE_CATEGORIES} | {'other': 0.0}
    for event in prof.key_averages():
        category = next((name for name, prefixes in PROFILE_CATEGORIES
                         if event.key.startswith(prefixes)), 'other')
        times[category] += event.self_cpu_time_total / 1e3
    return times


# --------------------------------------------------------------------------------------------
# Peak memory, one fresh process per measurement
# --------------------------------------------------------------------------------------------
def _proc_status_kib(key: str) -> int:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1])
    raise RuntimeError(f'{key} not in /proc/self/status')


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL('libc.so.6').malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_memory_in_this_process(variant: Variant, arch: str, batch: int, size: tuple[int, int],
                                mode: str, device: torch.device) -> float:
    """MiB the step adds at its peak over what the model and input hold before it.

    One step runs first (allocator pools, oneDNN caches), then the gradients are dropped so
    that the measured step allocates them again.
    """
    model = build_backbone(variant, arch).to(device)
    x = make_input(batch, size, variant, device)
    step = make_step(variant, model, x, mode)
    step()
    model.zero_grad(set_to_none=True)
    _release_free_memory()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2 ** 20
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current resident set
    before = _proc_status_kib('VmRSS')
    step()
    return (_proc_status_kib('VmHWM') - before) / 1024


#: glibc malloc settings under which freed blocks of 128 KiB and more go back to the system at
#: once, so the resident set follows the live tensors. By default glibc raises its mmap
#: threshold after large frees (up to 32 MiB) and then serves such blocks from its heap, which
#: stays resident: the default RSS peak includes memory that is free but kept.
MALLOC_RETURNS_FREED = {'MALLOC_MMAP_THRESHOLD_': str(128 * 1024)}


def peak_memory(variant: Variant, arch: str, batch: int, size: tuple[int, int], mode: str,
                device: torch.device, threads: int, env: dict[str, str] | None = None,
                mmpretrain_overlay: str | None = None) -> float:
    """:func:`peak_memory_in_this_process` in a fresh Python process (``env`` added; the
    ``mmpretrain`` variant finds mmpretrain there as the run did, with ``mmpretrain_overlay``)."""
    spec = dict(variant=asdict(variant), arch=arch, batch=batch, size=list(size), mode=mode,
                device=str(device), threads=threads, mmpretrain_overlay=mmpretrain_overlay)
    result = subprocess.run([sys.executable, '-m', 'convnext_dense.benchmark.measure',
                             json.dumps(spec)],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f'memory probe for {spec} failed:\n{result.stderr[-2000:]}')
    return float(result.stdout.strip().splitlines()[-1])


def memory_probe_main(argv: Sequence[str]) -> None:
    """Entry of the fresh process: print :func:`peak_memory_in_this_process` of a JSON spec."""
    spec = json.loads(argv[0])
    torch.set_num_threads(spec['threads'])
    variant = Variant(spec['variant']['impl'], tuple(spec['variant']['options']))
    if variant.impl == 'mmpretrain':
        overlay = spec.get('mmpretrain_overlay')
        status = mmpretrain_status(overlay, use_overlay=overlay is not None)
        if not status.usable:
            raise SystemExit(status.describe())
    print(peak_memory_in_this_process(variant, spec['arch'], spec['batch'], tuple(spec['size']),
                                      spec['mode'], torch.device(spec['device'])))


if __name__ == '__main__':
    memory_probe_main(sys.argv[1:])
