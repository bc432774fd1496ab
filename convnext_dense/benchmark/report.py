"""The benchmark's report: the issue's targets and the markdown written to docs/benchmarks.md."""
from __future__ import annotations

import os
import platform
import time

import torch

from .measure import PROFILE_CATEGORIES, matmul_size
from .mmpretrain_env import MMPretrainStatus
from .suite import Results, Settings, Size, SpeedRow, size_str
from .whole_models import PAIRS, WholeModelRow

#: The issue's targets: (description, minimum or maximum, value).
TARGET_DEFAULT_VS_TIMM = 1.0
TARGET_DEFAULT_VS_OFFICIAL = 1.05
TARGET_DEFAULT_VS_MMPRETRAIN = 1.0
TARGET_WHOLE_VS_MMPRETRAIN = 1.0
TARGET_BEST_OPTION_VS_OFFICIAL = 1.3
TARGET_WITH_CP_MEMORY = 0.6


def machine_description(settings: Settings,
                        mmpretrain: MMPretrainStatus | None = None) -> list[str]:
    """Lines naming the processor, memory, threads and package versions (``mmpretrain``: its
    import checked by the run, named where it fails)."""
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
        version: str | None
        try:
            version = metadata.version(package)
        except metadata.PackageNotFoundError:
            version = None
        if package == 'mmpretrain' and mmpretrain is not None and mmpretrain.usable:
            versions.append(mmpretrain.describe())  # the one imported: installed or overlay
        elif package == 'mmpretrain' and mmpretrain is not None and mmpretrain.import_error:
            versions.append(f'mmpretrain {version or "(no package metadata)"} (fails to import)')
        else:
            versions.append(f'{package} {version or "not installed"}')
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
                          ('official', TARGET_DEFAULT_VS_OFFICIAL),
                          ('mmpretrain', TARGET_DEFAULT_VS_MMPRETRAIN)):
        ratios = []
        for row in results.speed:
            if row.variant == 'ours':
                theirs = _speed(results, row.arch, row.size, row.mode, other)
                if theirs:
                    ratios.append((theirs.seconds / row.seconds, row))
        if ratios:
            worst, row = min(ratios, key=lambda r: r[0])
            checks.append((f'default eager path >= {target:.2f}x {other}, every size and mode',
                           f'min {worst:.2f}x ({row.arch} {size_str(row.size)} {row.mode})',
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
                           f'training, {settings.option_arch} {size_str(size)}',
                           f'{ratio:.2f}x ({best.variant}: {best.gflops_per_s / ceiling:.0%} of '
                           f'the matmul ceiling; {TARGET_BEST_OPTION_VS_OFFICIAL:.2f}x needs '
                           f'{needed:.0%})', ratio >= TARGET_BEST_OPTION_VS_OFFICIAL))
        amp = next((row for row in ours if 'amp' in row.variant), None)
        if official and amp:
            checks.append((f'(for reference, not fp32) amp training vs official, '
                           f'{settings.option_arch} {size_str(size)}',
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
                           f'{size_str(size)}, {label}', f'{ratio:.2f}x',
                           ratio <= TARGET_WITH_CP_MEMORY))
    for name, rows in _whole_pairs(results):
        ratio = rows['mmpretrain'].seconds / rows['ours'].seconds
        checks.append((f'whole {PAIRS[name].title} training step >= '
                       f'{TARGET_WHOLE_VS_MMPRETRAIN:.2f}x the mmpretrain-backbone config, '
                       f'{size_str(rows["ours"].size)}, batch {rows["ours"].batch}',
                       f'{ratio:.2f}x', ratio >= TARGET_WHOLE_VS_MMPRETRAIN))
    return checks


def _whole_pairs(results: Results) -> list[tuple[str, dict[str, WholeModelRow]]]:
    """The whole models measured with both backbones: (name, {variant: row})."""
    pairs: dict[str, dict[str, WholeModelRow]] = {}
    for row in results.whole:
        pairs.setdefault(row.name, {})[row.variant] = row
    return [(name, rows) for name, rows in pairs.items() if {'ours', 'mmpretrain'} <= set(rows)]


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
           '- `official`: the official release\'s detection backbone, end to end, on the same '
           'weights: its forward on NCHW-contiguous tensors (no channels-last anywhere), its '
           'block (plain `nn.Conv2d` depthwise conv, permute, MLP, layer scale, permute back) '
           'and its channels-first LayerNorm computing mean and variance by hand',
           '- `mmpretrain`: `mmpretrain.models.ConvNeXt` (`gap_before_final_norm=False`), the '
           "backbone of mmdet's and mmseg's own ConvNeXt configs; as installed (the "
           '`benchmark` extra), or from the overlay folder `make setup` installs it into; '
           'imported with transformers hidden (`convnext_dense/benchmark/mmpretrain_env.py`)',
           '- options of ours: `channels_last` (model and input), `with_cp` (activation '
           'checkpointing), `compile` (`torch.compile`, default inductor), `amp` '
           '(autocast, bf16 on CPU, fp16 on GPU), `amp_bf16` (autocast bf16, GPU only)', '',
           '## Machine', '', *machine_description(settings, results.mmpretrain), '',
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
                cells = [arch, size_str(size), str(ours.batch), mode, str(ours.reps),
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
                    out.append(f'| {size_str(size)} | {row.batch} | {mode} | {row.variant} | '
                               f'{row.images_per_s:.2f} | '
                               f'{_ratio(ours.seconds if ours else None, row.seconds)} | '
                               f'{_ratio(official.seconds if official else None, row.seconds)} |')
        out += ['']

    if results.profiles:
        size = (settings.option_sizes or settings.sizes)[0]
        keys = list(results.profiles)
        out += [f'## Where the time goes ({settings.option_arch}, {size_str(size)}, batch '
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
                cells = [size_str(size), str(row.batch), row.variant, f'{row.mib:.0f}',
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
                f'inference on one {size_str(settings.detector_size)} image through the data '
                f'preprocessor and `predict`: **{results.detector_images_per_s:.3f} images/s** '
                f'(median of {settings.detector_reps}). Test score threshold 0, so that the '
                'untrained detector returns its 100 boxes and segments them, as a trained one '
                'does on a busy image (at the configs\' 0.05 an untrained classifier passes no '
                'box and the mask head would not run). The paper reports its FPS on an '
                'A100.', '']

    whole = _whole_pairs(results)
    if whole:
        out += ["## Whole models: training step, this backbone against mmpretrain's", '',
                "Each model twice, from this project's config: with this package's backbone, "
                "and with the backbone of the toolbox's own ConvNeXt-T config "
                "(`type='mmpretrain.ConvNeXt', arch='tiny', drop_path_rate=0.4, "
                "layer_scale_init_value=1.0, gap_before_final_norm=False`); same neck, heads, "
                'losses and data preprocessor, the same random weights (the mmpretrain model\'s '
                "initialisation, converted by this package's checkpoint converter), the same "
                'synthetic batch (Mask R-CNN: 8 boxes with masks per image; UperNet: a '
                'segmentation map of 16x16 blocks of random classes), train mode with drop '
                'path 0.4. A step is the `loss` forward, backward and an AdamW step over all '
                'parameters (the same optimizer for both: the configs\' layer-decay '
                'constructors only set per-parameter learning rates). Median of the timed '
                f'steps after {settings.warmup} warm-up step(s), the two models taking turns '
                'step by step (`convnext_dense/benchmark/whole_models.py`). ' + (
                    'The recipes train at up to 800x1333 (Mask R-CNN) and 512x512 (UperNet), 2 '
                    'images per GPU; sizes here as the command sets them.'), '',
                '| model | our config | reference backbone from | input | batch | reps | '
                'ours s/step | mmpretrain backbone s/step | ours vs |',
                '|---|---|---|---|---|---|---|---|---|']
        for name, rows in whole:
            pair, ours, theirs = PAIRS[name], rows['ours'], rows['mmpretrain']
            out.append(f'| {pair.title} | `{pair.config}` | `{pair.reference}` | '
                       f'{size_str(ours.size)} | {ours.batch} | {ours.reps} | '
                       f'{ours.seconds:.2f} | {theirs.seconds:.2f} | '
                       f'{_ratio(theirs.seconds, ours.seconds)} |')
        out += ['']
    return '\n'.join(out)
