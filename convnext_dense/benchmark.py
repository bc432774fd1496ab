"""Speed and memory of ConvNeXt backbones side by side: this package, timm, the official design.

What :mod:`tools/benchmark.py <tools.benchmark>` runs. Every implementation gets the same
input in the same process; repetitions are interleaved (one step of each in turn), so a
machine whose load changes during the run slows all of them alike, and the reported figure is
the median over repetitions after warm-up. Peak memory is measured in a fresh subprocess per
measurement (CPU: the rise of the resident set over the step, from ``/proc/self/status``
``VmHWM`` after resetting it; CUDA: ``max_memory_allocated``).
"""
from __future__ import annotations

import ctypes
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from .backbone import ConvNeXt
from .layers import ConvNeXtBlock, LayerNorm2d

IMPLS = ('ours', 'timm', 'official', 'mmpretrain')
OPTIONS = ('channels_last', 'with_cp', 'compile', 'amp', 'amp_bf16')
#: options measured only on a GPU (on a CPU, ``amp`` is already bf16)
GPU_ONLY_OPTIONS = ('amp_bf16',)
MODES = ('infer', 'train')
ARCH_ALIASES = {'T': 'tiny', 'S': 'small', 'B': 'base', 'L': 'large', 'XL': 'xlarge'}


# --------------------------------------------------------------------------------------------
# The official release's design, as the baseline
# --------------------------------------------------------------------------------------------
class OfficialLayerNorm(nn.Module):
    """The official release's channels-first LayerNorm: mean and variance by hand."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = x.mean(1, keepdim=True)
        s = (x - u).pow(2).mean(1, keepdim=True)
        x = (x - u) / torch.sqrt(s + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class OfficialBlock(nn.Module):
    """The official release's block: plain ``nn.Conv2d``, permute, MLP, layer scale, permute."""

    def __init__(self, dim: int, layer_scale_init_value: float) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (nn.Parameter(torch.full((dim,), layer_scale_init_value))
                      if layer_scale_init_value > 0 else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.dwconv(x).permute(0, 2, 3, 1)
        x = self.pwconv2(self.act(self.pwconv1(self.norm(x))))
        if self.gamma is not None:
            x = self.gamma * x
        return shortcut + x.permute(0, 3, 1, 2)


def official_convnext(arch: str, **kwargs: Any) -> ConvNeXt:
    """Our backbone with its blocks and channels-first norms swapped for the official design.

    Same structure, parameter names and weights (the state dict loads 1:1), so the only
    difference to ``ConvNeXt(arch)`` is the code that runs.
    """
    model = ConvNeXt(arch=arch, **kwargs)
    state = model.state_dict()
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, LayerNorm2d):
                setattr(parent, name, OfficialLayerNorm(child.normalized_shape[0], child.eps))
            elif isinstance(child, ConvNeXtBlock):
                if child.grn is not None or not isinstance(child.drop_path, nn.Identity):
                    raise ValueError('the official baseline has no GRN and no drop path here')
                setattr(parent, name, OfficialBlock(child.dwconv.in_channels,
                                                    1.0 if child.gamma is not None else 0.0))
    model.load_state_dict(state)
    return model


# --------------------------------------------------------------------------------------------
# Building what is measured
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """One implementation with options: ``ours``, ``timm``, ``official`` or ``mmpretrain``."""

    impl: str
    options: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        return '+'.join((self.impl, *self.options))


def mmpretrain_available() -> bool:
    """Whether mmpretrain can be imported."""
    try:
        import mmpretrain  # noqa: F401
    except Exception:
        return False
    return True


class _TupleOutputs(nn.Module):
    """Wrap a model whose forward returns a list, so every variant returns a tuple."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


def build_backbone(variant: Variant, arch: str) -> nn.Module:
    """Build the backbone of a variant, all four stage outputs, random weights, train mode."""
    with_cp = 'with_cp' in variant.options
    if variant.impl == 'ours':
        model: nn.Module = ConvNeXt(arch=arch, out_indices=(0, 1, 2, 3), with_cp=with_cp)
    elif variant.impl == 'official':
        model = official_convnext(arch, out_indices=(0, 1, 2, 3), with_cp=with_cp)
    elif variant.impl == 'timm':
        import timm
        model = _TupleOutputs(timm.create_model(f'convnext_{arch}', pretrained=False,
                                                features_only=True))
        if with_cp:
            model.model.set_grad_checkpointing(True)
    elif variant.impl == 'mmpretrain':
        from mmpretrain.models import ConvNeXt as MMPretrainConvNeXt
        model = _TupleOutputs(MMPretrainConvNeXt(arch=arch, out_indices=(0, 1, 2, 3),
                                                 gap_before_final_norm=False, with_cp=with_cp))
    else:
        raise ValueError(f'impl must be one of {", ".join(IMPLS)}, got {variant.impl!r}')
    unknown = set(variant.options) - set(OPTIONS)
    if unknown:
        raise ValueError(f'options must be among {", ".join(OPTIONS)}, got {sorted(unknown)}')
    if 'channels_last' in variant.options:
        model = model.to(memory_format=torch.channels_last)
    return model


def make_input(batch: int, size: tuple[int, int], variant: Variant,
               device: torch.device) -> torch.Tensor:
    """A random image batch in the variant's memory format."""
    x = torch.randn(batch, 3, *size, device=device)
    if 'channels_last' in variant.options:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


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
            start = time.perf_counter()
            step()
            _sync(device)
            if i == warmup - 1:
                round_s += time.perf_counter() - start
    if budget_s is not None and round_s > 0:
        reps = max(min(min_reps, reps), min(reps, int(budget_s / round_s)))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def count_flops(arch: str, batch: int, size: tuple[int, int], mode: str) -> int:
    """FLOPs (2 per multiply-add) of one step: the forward's, three times that for training.

    The forward is counted with torch's FLOP counter on the meta device; a backward costs
    twice the forward (input and weight gradients), the usual convention.
    """
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
                device: torch.device, threads: int, env: dict[str, str] | None = None) -> float:
    """:func:`peak_memory_in_this_process` in a fresh Python process (``env`` added)."""
    spec = dict(variant=asdict(variant), arch=arch, batch=batch, size=list(size), mode=mode,
                device=str(device), threads=threads)
    result = subprocess.run([sys.executable, '-m', 'convnext_dense.benchmark', json.dumps(spec)],
                            capture_output=True, text=True, check=False,
                            env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f'memory probe for {spec} failed:\n{result.stderr[-2000:]}')
    return float(result.stdout.strip().splitlines()[-1])


def _memory_probe_main(argv: Sequence[str]) -> None:
    spec = json.loads(argv[0])
    torch.set_num_threads(spec['threads'])
    variant = Variant(spec['variant']['impl'], tuple(spec['variant']['options']))
    print(peak_memory_in_this_process(variant, spec['arch'], spec['batch'], tuple(spec['size']),
                                      spec['mode'], torch.device(spec['device'])))



# --------------------------------------------------------------------------------------------
# A whole run
# --------------------------------------------------------------------------------------------
Size = tuple[int, int]


def _size_str(size: Size) -> str:
    return f'{size[0]}x{size[1]}'



@dataclass
class Settings:
    """What one run measures. The defaults are the full run written to docs/benchmarks.md."""

    archs: tuple[str, ...] = ('tiny', 'small', 'base')
    sizes: tuple[Size, ...] = ((224, 224), (512, 512), (800, 1216))
    batches: dict[Size, int] = field(default_factory=lambda: {
        (224, 224): 4, (512, 512): 1, (800, 1216): 1})
    #: sizes of archs that should not run all of ``sizes`` (time budget of the full run)
    arch_sizes: dict[str, tuple[Size, ...]] = field(default_factory=lambda: {
        'small': ((224, 224), (512, 512)), 'base': ((224, 224), (512, 512))})
    impls: tuple[str, ...] = ('ours', 'timm', 'official', 'mmpretrain')
    modes: tuple[str, ...] = MODES
    options: tuple[str, ...] = OPTIONS
    option_arch: str = 'tiny'
    option_sizes: tuple[Size, ...] = ((224, 224), (512, 512))
    #: sizes at which ``compile`` is measured (each shape compiles anew, minutes on a CPU)
    compile_sizes: tuple[Size, ...] = ((224, 224),)
    memory_sizes: tuple[Size, ...] = ((800, 1216),)
    profile: bool = True
    warmup: int = 1
    #: timed rounds per setting: as many as fit in ``budget_s`` (by the warm-up round),
    #: within ``min_reps``..``reps``
    reps: int = 7
    min_reps: int = 3
    budget_s: float | None = 15.0
    detector_config: str | None = 'configs/mask_rcnn_convnext_t_coco.py'
    detector_size: Size = (800, 1333)
    detector_reps: int = 3
    threads: int = field(default_factory=torch.get_num_threads)
    device: str = 'cuda' if torch.cuda.is_available() else 'cpu'

    def batch(self, size: Size) -> int:
        """Batch size for an input size (1 where none is set)."""
        return self.batches.get(size, 1)

    def sizes_of(self, arch: str) -> tuple[Size, ...]:
        """The input sizes measured for ``arch``."""
        return tuple(s for s in self.arch_sizes.get(arch, self.sizes) if s in self.sizes)


@dataclass
class SpeedRow:
    """Median seconds per step of one variant in one setting."""

    arch: str
    size: Size
    batch: int
    mode: str
    variant: str
    seconds: float
    flops: int
    reps: int

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds

    @property
    def gflops_per_s(self) -> float:
        return self.flops / self.seconds / 1e9


@dataclass
class MemoryRow:
    """Peak memory a training step adds (MiB)."""

    arch: str
    size: Size
    batch: int
    variant: str
    mib: float
    #: the same with :data:`MALLOC_RETURNS_FREED` (CPU only)
    mib_freed_returned: float | None = None


@dataclass
class Results:
    """Everything one run measured."""

    settings: Settings
    #: every measurement of the matrix-multiply rate, one at the start and one after each
    #: setting: on a shared machine single readings dip, so the ceiling is the highest
    matmul_samples: list[float] = field(default_factory=list)
    speed: list[SpeedRow] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    detector_images_per_s: float | None = None
    #: ``{(variant, mode): {category: ms}}`` of one profiled step
    profiles: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    #: False until every part of the run finished (the report says it is partial)
    complete: bool = False

    @property
    def matmul_gflops(self) -> float:
        """The practical ceiling: the highest matrix-multiply rate measured in this run."""
        return max(self.matmul_samples, default=0.0)


def _variants(settings: Settings, arch: str, size: Size, mode: str) -> list[Variant]:
    variants = [Variant(impl) for impl in settings.impls]
    if arch == settings.option_arch and size in settings.option_sizes:
        for option in settings.options:
            if option == 'with_cp' and mode == 'infer':
                continue  # checkpointing does nothing without gradients
            if option == 'compile' and size not in settings.compile_sizes:
                continue
            if option in GPU_ONLY_OPTIONS and settings.device != 'cuda':
                continue
            variants.append(Variant('ours', (option,)))
    return variants


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_speed(settings: Settings, results: Results,
              progress: Callable[[Results], None] = lambda results: None) -> None:
    """Time every variant in every (arch, size, mode), interleaved within each setting; after
    each setting, one more reading of the matrix-multiply rate and ``progress(results)``."""
    device = torch.device(settings.device)
    for arch in settings.archs:
        for size in settings.sizes_of(arch):
            batch = settings.batch(size)
            for mode in settings.modes:
                steps = {}
                for variant in _variants(settings, arch, size, mode):
                    torch.manual_seed(0)
                    model = build_backbone(variant, arch).to(device)
                    steps[variant.name] = make_step(variant, model,
                                                    make_input(batch, size, variant, device), mode)
                flops = count_flops(arch, batch, size, mode)
                _log(f'{arch} {size[0]}x{size[1]} x{batch} {mode}: {", ".join(steps)}')
                times = time_interleaved(steps, settings.warmup, settings.reps, device,
                                         settings.budget_s, settings.min_reps)
                for name, seconds in times.items():
                    results.speed.append(SpeedRow(arch, size, batch, mode, name,
                                                  statistics.median(seconds), flops, len(seconds)))
                del steps
                gc.collect()
                results.matmul_samples.append(matmul_gflops(device, reps=3))
                progress(results)


def run_memory(settings: Settings, results: Results) -> None:
    """Peak memory of a training step of each implementation and with ``with_cp``."""
    device = torch.device(settings.device)
    arch = settings.option_arch
    variants = [Variant(impl) for impl in settings.impls]
    if 'with_cp' in settings.options:
        variants.append(Variant('ours', ('with_cp',)))
    for size in settings.memory_sizes:
        batch = settings.batch(size)
        for variant in variants:
            _log(f'memory {arch} {size[0]}x{size[1]} x{batch} {variant.name}')
            mib = peak_memory(variant, arch, batch, size, 'train', device, settings.threads)
            returned = None if device.type == 'cuda' else peak_memory(
                variant, arch, batch, size, 'train', device, settings.threads,
                MALLOC_RETURNS_FREED)
            results.memory.append(MemoryRow(arch, size, batch, variant.name, mib, returned))


def run_profiles(settings: Settings, results: Results) -> None:
    """Where the time of a step goes, for each implementation (option arch, first option size)."""
    device = torch.device(settings.device)
    size = (settings.option_sizes or settings.sizes)[0]
    batch = settings.batch(size)
    for mode in settings.modes:
        for impl in settings.impls:
            variant = Variant(impl)
            _log(f'profile {settings.option_arch} {_size_str(size)} x{batch} {mode} {impl}')
            model = build_backbone(variant, settings.option_arch).to(device)
            step = make_step(variant, model, make_input(batch, size, variant, device), mode)
            results.profiles[(impl, mode)] = profile_step(step)


def detector_images_per_s(config: str, size: Size, reps: int, device: torch.device) -> float:
    """Inference images/s of a config's whole detector (random weights) on one image.

    An untrained classifier scores every class about equally (1/81 on COCO), under the
    configs' 0.05 test threshold, so it would return no box and the mask head would never
    run. The score threshold is set to 0 here: the detector returns its ``max_per_img``
    boxes (100) and segments them, the load of a trained model on a busy COCO image.
    """
    from mmengine.config import Config
    from mmengine.structures import InstanceData  # noqa: F401  (mmdet data samples need it)

    from .complexity import build_model
    cfg = Config.fromfile(config)
    cfg.model.backbone.init_cfg = None
    rcnn_test_cfg = cfg.model.get('test_cfg', {}).get('rcnn')
    if rcnn_test_cfg is not None:
        rcnn_test_cfg.score_thr = 0.0
    torch.manual_seed(0)
    model = build_model(cfg).to(device).eval()
    from mmdet.structures import DetDataSample
    height, width = size
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
    meta = dict(img_shape=size, ori_shape=size, scale_factor=(1.0, 1.0))
    data = model.data_preprocessor(dict(inputs=[image], data_samples=[DetDataSample(
        metainfo=meta)]), training=False)

    def step() -> None:
        with torch.no_grad():
            predictions = model(**data, mode='predict')
        if rcnn_test_cfg is not None and len(predictions[0].pred_instances) == 0:
            raise RuntimeError(f'{config}: the detector returned no box at score_thr=0, so '
                               'its mask head did not run; the timing would not be a '
                               "detector's")
    times = time_interleaved({'detector': step}, warmup=1, reps=reps, device=device)
    return 1 / statistics.median(times['detector'])


def run(settings: Settings,
        progress: Callable[[Results], None] = lambda results: None) -> Results:
    """Measure everything ``settings`` asks for.

    ``progress(results)`` is called whenever a part has been measured (each setting, each
    phase), so a caller can write what is there if the run is stopped before its end.
    """
    start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    device = torch.device(settings.device)
    results = Results(settings)
    if not mmpretrain_available():
        settings.impls = tuple(i for i in settings.impls if i != 'mmpretrain')
        results.skipped.append('mmpretrain: not installed')

    def update() -> None:
        results.wall_s = time.perf_counter() - start
        progress(results)

    results.matmul_samples.append(matmul_gflops(device))
    _log(f'matmul: {results.matmul_gflops:.1f} GFLOP/s')
    run_speed(settings, results, lambda _: update())
    if settings.profile and device.type == 'cpu':
        run_profiles(settings, results)
        update()
    if settings.memory_sizes:
        run_memory(settings, results)
        update()
    if settings.detector_config:
        _log(f'detector {settings.detector_config}')
        results.detector_images_per_s = detector_images_per_s(
            settings.detector_config, settings.detector_size, settings.detector_reps, device)
    results.complete = True
    update()
    return results



# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
#: The issue's targets: (description, minimum or maximum, value).
TARGET_DEFAULT_VS_TIMM = 1.0
TARGET_DEFAULT_VS_OFFICIAL = 1.05
TARGET_BEST_OPTION_VS_OFFICIAL = 1.3
TARGET_WITH_CP_MEMORY = 0.6


def machine_description(settings: Settings) -> list[str]:
    """Lines naming the processor, memory, threads and package versions."""
    import importlib.metadata as metadata
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    mem_gib = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2 ** 30
    lines = [f'- CPU: {cpu}, {os.cpu_count()} logical cores, {mem_gib:.0f} GiB RAM; '
             f'{settings.threads} torch threads; CPU capability '
             f'{torch.backends.cpu.get_cpu_capability()}']
    if settings.device == 'cuda':
        lines.append(f'- GPU: {torch.cuda.get_device_name()}')
    versions = [f'Python {platform.python_version()}', f'torch {torch.__version__}']
    for package in ('timm', 'mmengine', 'mmcv', 'mmdet', 'mmpretrain'):
        try:
            versions.append(f'{package} {metadata.version(package)}')
        except metadata.PackageNotFoundError:
            versions.append(f'{package} not installed')
    lines.append('- ' + ', '.join(versions))
    return lines


def _speed(results: Results, arch: str, size: Size, mode: str, variant: str) -> SpeedRow | None:
    for row in results.speed:
        if (row.arch, row.size, row.mode, row.variant) == (arch, size, mode, variant):
            return row
    return None


def _ratio(a: float | None, b: float | None) -> str:
    return f'{a / b:.2f}x' if a and b else 'n/a'


def target_checks(results: Results) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for each of the issue's targets that this run measured."""
    checks: list[tuple[str, str, bool | None]] = []
    settings = results.settings
    for other, target in (('timm', TARGET_DEFAULT_VS_TIMM),
                          ('official', TARGET_DEFAULT_VS_OFFICIAL)):
        ratios = []
        for row in results.speed:
            if row.variant == 'ours':
                theirs = _speed(results, row.arch, row.size, row.mode, other)
                if theirs:
                    ratios.append((theirs.seconds / row.seconds, row))
        if ratios:
            worst, row = min(ratios, key=lambda r: r[0])
            checks.append((f'default eager path >= {target:.2f}x {other}, every size and mode',
                           f'min {worst:.2f}x ({row.arch} {_size_str(row.size)} {row.mode})',
                           worst >= target))
    for size in settings.option_sizes:
        official = _speed(results, settings.option_arch, size, 'train', 'official')
        ours = [row for row in results.speed if row.arch == settings.option_arch
                and row.size == size and row.mode == 'train' and row.variant.startswith('ours')]
        fp32 = [row for row in ours if 'amp' not in row.variant]
        if official and fp32:
            best = min(fp32, key=lambda r: r.seconds)
            ratio = official.seconds / best.seconds
            ceiling = results.matmul_gflops
            needed = TARGET_BEST_OPTION_VS_OFFICIAL * official.gflops_per_s / ceiling
            checks.append((f'best fp32 option >= {TARGET_BEST_OPTION_VS_OFFICIAL:.2f}x official, '
                           f'training, {settings.option_arch} {_size_str(size)}',
                           f'{ratio:.2f}x ({best.variant}: {best.gflops_per_s / ceiling:.0%} of '
                           f'the matmul ceiling; {TARGET_BEST_OPTION_VS_OFFICIAL:.2f}x needs '
                           f'{needed:.0%})', ratio >= TARGET_BEST_OPTION_VS_OFFICIAL))
        amp = next((row for row in ours if 'amp' in row.variant), None)
        if official and amp:
            checks.append((f'(for reference, not fp32) amp training vs official, '
                           f'{settings.option_arch} {_size_str(size)}',
                           f'{official.seconds / amp.seconds:.2f}x', None))
    for size in settings.memory_sizes:
        rows = {row.variant: row for row in results.memory if row.size == size}
        if 'ours' not in rows or 'ours+with_cp' not in rows:
            continue
        measures = [('default malloc', 'mib')]
        if rows['ours'].mib_freed_returned is not None:
            measures.append(('freed memory returned', 'mib_freed_returned'))
        for label, attr in measures:
            ratio = getattr(rows['ours+with_cp'], attr) / getattr(rows['ours'], attr)
            checks.append((f'with_cp peak training memory <= {TARGET_WITH_CP_MEMORY:.2f}x without, '
                           f'{_size_str(size)}, {label}', f'{ratio:.2f}x',
                           ratio <= TARGET_WITH_CP_MEMORY))
    return checks


def render_markdown(results: Results, command: str, note: str = '') -> str:
    """The report: machine, command, targets, throughput, options, memory, detector."""
    settings = results.settings
    out = ['# Benchmarks', '',
           'Written by `tools/benchmark.py`; numbers are medians of the timed repetitions '
           f'(column `reps`: as many as fit in {settings.budget_s or 0:.0f} s per setting, '
           f'{min(settings.min_reps, settings.reps)} to {settings.reps}) after '
           f'{settings.warmup} warm-up step(s), one step of each variant in turn, so load '
           'changes on the machine hit all variants alike. Images/s counts images of the batch. '
           'Ratios are speed-ups of this package (`ours`): time of the other / time of ours, '
           'so > 1 means ours is faster.', '',
           '- `ours`: `convnext_dense.ConvNeXt`, `out_indices=(0, 1, 2, 3)`, the default eager '
           'path the configs run (channels-last inside; the depthwise convolution\'s CPU '
           'backward on oneDNN\'s forward kernels; fp32 CPU inference MLP as fused oneDNN '
           'linear + GELU and linear + residual kernels)',
           "- `timm`: `timm.create_model('convnext_*', features_only=True)`",
           '- `official`: the official release\'s design on the same weights: its block '
           '(plain `nn.Conv2d` depthwise conv, permute, MLP, layer scale, permute) and its '
           'channels-first LayerNorm computing mean and variance by hand',
           '- `mmpretrain`: `mmpretrain.models.ConvNeXt` where installed',
           '- options of ours: `channels_last` (model and input), `with_cp` (activation '
           'checkpointing), `compile` (`torch.compile`, default inductor), `amp` '
           '(autocast, bf16 on CPU, fp16 on GPU), `amp_bf16` (autocast bf16, GPU only)', '',
           '## Machine', '', *machine_description(settings), '',
           f'- Date: {time.strftime("%Y-%m-%d %H:%M %Z")}; the run took '
           f'{results.wall_s / 60:.1f} min', '']
    if not results.complete:
        out += ['- **Partial report**: the run had not finished when this was written (it was '
                'stopped, or is still going); the tables hold what was measured by then.', '']
    if note:
        out += [f'- Note: {note}', '']
    out += ['Command:', '', '```bash', command, '```', '']
    if results.skipped:
        out += ['Skipped: ' + '; '.join(results.skipped), '']

    out += ['## Targets', '', '| target | measured | met |', '|---|---|---|']
    for target, measured, met in target_checks(results):
        verdict = 'n/a' if met is None else 'yes' if met else '**no**'
        out.append(f'| {target} | {measured} | {verdict} |')
    out += ['']

    n = matmul_size('cuda' if settings.device == 'cuda' else 'cpu')
    out += ['## Backbone throughput', '',
            f'Machine matrix-multiply ceiling (fp32 {n}x{n} `torch.mm`, same run): '
            f'**{results.matmul_gflops:.0f} GFLOP/s**, the highest of '
            f'{len(results.matmul_samples)} readings (one at the start, one after each setting; '
            f'lowest {min(results.matmul_samples, default=0.0):.0f}). Backbone GFLOP/s counts '
            'the FLOPs of the step (2 per multiply-add; forward, plus backward for training) '
            'with torch\'s FLOP counter.', '']
    others = [impl for impl in settings.impls if impl != 'ours']
    header = ['arch', 'input', 'batch', 'mode', 'reps', 'ours img/s',
              'ours GFLOP/s (% of matmul)']
    header += [f'{impl} img/s (ours vs)' for impl in others]
    out += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
    for arch in settings.archs:
        for size in settings.sizes_of(arch):
            for mode in settings.modes:
                ours = _speed(results, arch, size, mode, 'ours')
                if ours is None:
                    continue
                share = 100 * ours.gflops_per_s / results.matmul_gflops
                cells = [arch, _size_str(size), str(ours.batch), mode, str(ours.reps),
                         f'{ours.images_per_s:.2f}', f'{ours.gflops_per_s:.0f} ({share:.0f} %)']
                for impl in others:
                    row = _speed(results, arch, size, mode, impl)
                    cells.append(f'{row.images_per_s:.2f} ({_ratio(row.seconds, ours.seconds)})'
                                 if row else 'n/a')
                out.append('| ' + ' | '.join(cells) + ' |')
    out += ['']

    option_rows = [row for row in results.speed if '+' in row.variant]
    if option_rows:
        out += [f'## Options ({settings.option_arch})', '',
                '| input | batch | mode | variant | img/s | vs ours | vs official |',
                '|---|---|---|---|---|---|---|']
        for size in settings.option_sizes:
            for mode in settings.modes:
                ours = _speed(results, settings.option_arch, size, mode, 'ours')
                official = _speed(results, settings.option_arch, size, mode, 'official')
                for row in results.speed:
                    if (row.arch, row.size, row.mode) != (settings.option_arch, size, mode):
                        continue
                    if not row.variant.startswith('ours'):
                        continue
                    out.append(f'| {_size_str(size)} | {row.batch} | {mode} | {row.variant} | '
                               f'{row.images_per_s:.2f} | '
                               f'{_ratio(ours.seconds if ours else None, row.seconds)} | '
                               f'{_ratio(official.seconds if official else None, row.seconds)} |')
        out += ['']

    if results.profiles:
        size = (settings.option_sizes or settings.sizes)[0]
        keys = list(results.profiles)
        out += [f'## Where the time goes ({settings.option_arch}, {_size_str(size)}, batch '
                f'{settings.batch(size)})', '',
                'Self CPU time of one profiled step (`torch.profiler`), ms (share).', '',
                '| category | ' + ' | '.join(f'{impl} {mode}' for impl, mode in keys) + ' |',
                '|---|' + '---|' * len(keys)]
        categories = [name for name, _ in PROFILE_CATEGORIES] + ['other', 'total']
        for category in categories:
            cells = []
            for key in keys:
                times = results.profiles[key]
                total = sum(times.values())
                ms = total if category == 'total' else times[category]
                cells.append(f'{ms:.0f} ({100 * ms / total:.0f} %)')
            out.append(f'| {category} | ' + ' | '.join(cells) + ' |')
        out += ['']

    if results.memory:
        cpu = settings.device != 'cuda'
        out += [f'## Peak memory of a training step ({settings.option_arch})', '',
                'What the step (forward, backward, gradients) adds at its peak over the model '
                'and input, each measured in a fresh process: '
                + ('CPU resident set (`VmHWM` after resetting it, minus `VmRSS` before), with '
                   "glibc's default malloc and with `MALLOC_MMAP_THRESHOLD_=131072` (freed "
                   'blocks of 128 KiB or more go back to the system at once, so the resident '
                   "set follows the live tensors; by default glibc raises that threshold after "
                   'large frees, up to 32 MiB, and keeps such freed blocks resident in its heap).'
                   if cpu else 'CUDA `max_memory_allocated`.'), '']
        header = ['input', 'batch', 'variant', 'peak MiB', 'vs ours']
        if cpu:
            header += ['peak MiB, freed returned', 'vs ours']
        out += ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        for size in settings.memory_sizes:
            rows = [row for row in results.memory if row.size == size]
            ours = next((row for row in rows if row.variant == 'ours'), None)
            for row in rows:
                cells = [_size_str(size), str(row.batch), row.variant, f'{row.mib:.0f}',
                         _ratio(row.mib, ours.mib if ours else None)]
                if cpu and row.mib_freed_returned is not None:
                    cells += [f'{row.mib_freed_returned:.0f}',
                              _ratio(row.mib_freed_returned,
                                     ours.mib_freed_returned if ours else None)]
                out.append('| ' + ' | '.join(cells) + ' |')
        out += ['']

    if results.detector_images_per_s is not None:
        out += ['## Whole detector', '',
                f'`{settings.detector_config}` (Mask R-CNN, ConvNeXt-T, random weights), '
                f'inference on one {_size_str(settings.detector_size)} image through the data '
                f'preprocessor and `predict`: **{results.detector_images_per_s:.3f} images/s** '
                f'(median of {settings.detector_reps}). Test score threshold 0, so that the '
                'untrained detector returns its 100 boxes and segments them, as a trained one '
                'does on a busy image (at the configs\' 0.05 an untrained classifier passes no '
                'box and the mask head would not run). The paper reports its FPS on an '
                'A100.', '']
    return '\n'.join(out)


if __name__ == '__main__':
    _memory_probe_main(sys.argv[1:])
