"""How the benchmark measures, checked against values computed here independently.

Timing is checked on a fake clock (no speed assertion): each fake step advances it by a known
amount, so the expected figures follow by hand.
"""
from __future__ import annotations

import pytest
import torch

from convnext_dense.arch import ARCH_SETTINGS
from convnext_dense.benchmark import measure
from convnext_dense.benchmark.baselines import Variant
from convnext_dense.benchmark.measure import (
    count_flops,
    matmul_gflops,
    peak_memory,
    time_interleaved,
)


def convnext_macs(arch: str, batch: int, height: int, width: int) -> tuple[int, int]:
    """Multiply-adds of a ConvNeXt forward by hand from the architecture (paper, Fig. 4 and
    Sec. 2.6), and those of the stem convolution alone.

    Stem: 4x4 conv stride 4, 3 -> C0. Downsampling i: 2x2 conv stride 2, C(i-1) -> Ci. Block
    at HxW with C channels: 7x7 depthwise conv (49 C per pixel) and an MLP C -> 4C -> C
    (8 C^2 per pixel). Norms, GELU, layer scale and residuals are not multiply-adds.
    """
    depths, dims = ARCH_SETTINGS[arch]['depths'], ARCH_SETTINGS[arch]['dims']
    h, w = height // 4, width // 4
    stem = h * w * dims[0] * 3 * 4 * 4
    macs = stem
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        if i > 0:
            h, w = h // 2, w // 2
            macs += h * w * dim * dims[i - 1] * 2 * 2
        macs += depth * h * w * (dim * 7 * 7 + 8 * dim * dim)
    return batch * macs, batch * stem


@pytest.mark.parametrize('arch, batch, size', [('atto', 2, (64, 96)), ('tiny', 1, (224, 224))])
def test_flops_are_the_architectures_multiply_adds(arch, batch, size):
    macs, stem = convnext_macs(arch, batch, *size)
    assert count_flops(arch, batch, size, 'infer') == 2 * macs
    # backward: input and weight gradients of every conv and linear (each as many
    # multiply-adds as the forward), but no gradient of the image through the stem; the
    # benchmark's 3x-forward convention counts that one too (0.1 % of a tiny training step
    # at 224, 0.4 % of an atto one at 64x96)
    assert count_flops(arch, batch, size, 'train') == pytest.approx(2 * (3 * macs - stem),
                                                                    rel=0.01)


def test_flops_of_convnext_t_are_the_papers():
    macs, _ = convnext_macs('tiny', 1, 224, 224)
    assert 4.4e9 < macs < 4.6e9  # the paper's ConvNeXt-T: 4.5 G(MAC)s at 224 (with its head)


class FakeClock:
    """A clock that only the fake steps move."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_interleaved_timing_attributes_each_step_its_own_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(measure, 'perf_counter', clock)
    calls = []

    def step(name: str, seconds: float):
        def run() -> None:
            calls.append(name)
            clock.now += seconds
        return run

    steps = {'a': step('a', 0.25), 'b': step('b', 0.5)}
    # warm-up round 0.75 s; 3.1 s of budget: 4 rounds
    times = time_interleaved(steps, warmup=1, reps=9, device=torch.device('cpu'), budget_s=3.1)
    assert times == {'a': [0.25] * 4, 'b': [0.5] * 4}
    assert calls == ['a', 'b'] * 5
    calls.clear()
    # a budget too small for min_reps rounds still runs min_reps; without one, reps
    assert len(time_interleaved(steps, 1, 9, torch.device('cpu'), budget_s=0.1)['a']) == 3
    assert len(time_interleaved(steps, 0, 4, torch.device('cpu'))['b']) == 4
    assert len(time_interleaved(steps, 1, 9, torch.device('cpu'), budget_s=100.0)['a']) == 9


def test_matmul_rate_is_the_products_flops_over_the_median_time(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(measure, 'perf_counter', clock)
    n = 64
    # two warm-ups, then five timed products: the median takes 0.004 s
    durations = iter([1.0, 1.0, 0.002, 0.008, 0.004, 0.003, 0.005])
    real_mm = torch.mm

    def fake_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        assert a.shape == b.shape == (n, n)
        clock.now += next(durations)
        return real_mm(a, b)

    monkeypatch.setattr(torch, 'mm', fake_mm)
    rate = matmul_gflops(torch.device('cpu'), n=n, reps=5)
    assert rate == pytest.approx(2 * 64 ** 3 / 0.004 / 1e9)  # 131.072 GFLOP/s


@pytest.mark.slow
def test_peak_memory_probe_runs_in_a_fresh_process():
    # `python -m convnext_dense.benchmark.measure` in a subprocess
    plain = peak_memory(Variant('ours'), 'atto', 2, (128, 128), 'train', torch.device('cpu'), 1)
    checkpointed = peak_memory(Variant('ours', ('with_cp',)), 'atto', 2, (128, 128), 'train',
                               torch.device('cpu'), 1)
    assert 0 < checkpointed < plain
