"""A benchmark run: what it measures (:class:`Settings`), what it found (:class:`Results`),
and the run itself.

Every implementation gets the same input in the same process; repetitions are interleaved
(one step of each in turn), so a machine whose load changes during the run slows all of them
alike, and the reported figure is the median over repetitions after warm-up; the whole models
(:mod:`.whole_models`) likewise, their two backbones taking turns. mmpretrain is made
importable first thing (:mod:`.mmpretrain_env`). Peak memory is measured in a fresh
subprocess per measurement (:mod:`.measure`). :mod:`.report` writes the
markdown; ``tools/benchmark.py`` is the command line.
"""
from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .baselines import (
    GPU_ONLY_OPTIONS,
    IMPLS,
    OPTIONS,
    Variant,
    build_backbone,
    make_input,
    mmpretrain_status,
)
from .measure import (
    MALLOC_RETURNS_FREED,
    MODES,
    count_flops,
    make_step,
    matmul_gflops,
    peak_memory,
    profile_step,
    time_interleaved,
)
from .mmpretrain_env import MMPretrainStatus, default_overlay
from .whole_models import PAIRS, WholeModelRow, pair_of, time_pair

Size = tuple[int, int]


def size_str(size: Size) -> str:
    """``'HxW'``."""
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
    impls: tuple[str, ...] = IMPLS
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
    #: whole models measured with both backbones (:data:`~.whole_models.PAIRS`), training
    #: step; input and batch per model (defaults sized for a CPU; the recipes train Mask R-CNN
    #: at up to 800x1333 and UperNet at 512x512, 2 images per GPU)
    whole_models: tuple[str, ...] = tuple(PAIRS)
    whole_sizes: dict[str, Size] = field(default_factory=lambda: {
        'mask_rcnn': (640, 640), 'upernet': (512, 512)})
    #: UperNet needs 2 (its pooling module's 1x1 BatchNorm cannot train on one image)
    whole_batches: dict[str, int] = field(default_factory=lambda: {'mask_rcnn': 1, 'upernet': 2})
    whole_reps: int = 5
    #: where mmpretrain is looked for when it is not installed (None: installed only)
    mmpretrain_overlay: str | None = field(default_factory=lambda: str(default_overlay()))
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
    #: training steps of the whole models, ours against the mmpretrain backbone
    whole: list[WholeModelRow] = field(default_factory=list)
    #: ``{(variant, mode): {category: ms}}`` of one profiled step
    profiles: dict[tuple[str, str], dict[str, float]] = field(default_factory=dict)
    #: what was left out and why (one line each), e.g. mmpretrain not installed or broken
    skipped: list[str] = field(default_factory=list)
    #: mmpretrain's state where it was asked for (None: not asked for)
    mmpretrain: MMPretrainStatus | None = None
    wall_s: float = 0.0
    #: False until every part of the run finished (the report says it is partial)
    complete: bool = False

    @property
    def matmul_gflops(self) -> float:
        """The practical ceiling: the highest matrix-multiply rate measured in this run."""
        return max(self.matmul_samples, default=0.0)


def setting_variants(settings: Settings, arch: str, size: Size, mode: str) -> list[Variant]:
    """The variants timed together in one (arch, size, mode): every impl, and the options of
    ours at the option arch and sizes."""
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
                for variant in setting_variants(settings, arch, size, mode):
                    torch.manual_seed(0)
                    model = build_backbone(variant, arch).to(device)
                    steps[variant.name] = make_step(variant, model,
                                                    make_input(batch, size, variant, device), mode)
                flops = count_flops(arch, batch, size, mode)
                _log(f'{arch} {size_str(size)} x{batch} {mode}: {", ".join(steps)}')
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
            _log(f'memory {arch} {size_str(size)} x{batch} {variant.name}')
            overlay = settings.mmpretrain_overlay
            mib = peak_memory(variant, arch, batch, size, 'train', device, settings.threads,
                              mmpretrain_overlay=overlay)
            returned = None if device.type == 'cuda' else peak_memory(
                variant, arch, batch, size, 'train', device, settings.threads,
                MALLOC_RETURNS_FREED, mmpretrain_overlay=overlay)
            results.memory.append(MemoryRow(arch, size, batch, variant.name, mib, returned))


def run_profiles(settings: Settings, results: Results) -> None:
    """Where the time of a step goes, for each implementation (option arch, first option size)."""
    device = torch.device(settings.device)
    size = (settings.option_sizes or settings.sizes)[0]
    batch = settings.batch(size)
    for mode in settings.modes:
        for impl in settings.impls:
            variant = Variant(impl)
            _log(f'profile {settings.option_arch} {size_str(size)} x{batch} {mode} {impl}')
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
    from mmengine.structures import InstanceData  # noqa: F401  (mmdet data samples need it)

    from ..apis.models import build_random_model
    from ..apis.runner import load_config
    cfg = load_config(config)  # a file, or the shipped config of that name
    rcnn_test_cfg = cfg.model.get('test_cfg', {}).get('rcnn')
    if rcnn_test_cfg is not None:
        rcnn_test_cfg.score_thr = 0.0
    model = build_random_model(cfg, seed=0).to(device)
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


def run_whole_models(settings: Settings, results: Results,
                     progress: Callable[[Results], None] = lambda results: None) -> None:
    """A training step of each whole model with both backbones, interleaved."""
    device = torch.device(settings.device)
    for name in settings.whole_models:
        pair = pair_of(name)
        size = settings.whole_sizes.get(name, pair.paper_size)
        batch = settings.whole_batches.get(name, pair.paper_batch)
        _log(f'whole model {pair.title} {size_str(size)} x{batch}: ours, mmpretrain backbone')
        results.whole += time_pair(pair, size, batch, settings.warmup, settings.whole_reps,
                                   device)
        gc.collect()
        progress(results)


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
    if 'mmpretrain' in settings.impls or settings.whole_models:
        # first thing: from here on mmpretrain imports in this process (see .mmpretrain_env)
        overlay = settings.mmpretrain_overlay
        results.mmpretrain = mmpretrain_status(overlay, use_overlay=overlay is not None)
        _log(results.mmpretrain.describe())
        if not results.mmpretrain.usable:
            # not measured; the report says why (not installed, or installed but broken)
            settings.impls = tuple(i for i in settings.impls if i != 'mmpretrain')
            results.skipped.append(results.mmpretrain.describe())
            if settings.whole_models:
                results.skipped.append('the whole models (they compare with mmpretrain\'s '
                                       'backbone)')
                settings.whole_models = ()
            _log(f'skipped {"; ".join(results.skipped)}')

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
        update()
    if settings.whole_models:
        run_whole_models(settings, results, lambda _: update())
    results.complete = True
    update()
    return results
