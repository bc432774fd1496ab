"""Shared test helpers."""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path
from types import ModuleType

import pytest
import torch
from mmengine import Config
from mmengine.config import utils as _config_utils


def _parse_each_metafile_once() -> None:
    """Memoize mmengine's reading of the YAML metafiles of installed OpenMMLab packages.

    Each ``mmdet::``/``mmseg::`` base of a config makes mmengine parse all of the package's
    ``.mim`` metafiles (about 75 YAML files, ~0.2 s on the CI machine) before it falls back to
    the base's path: most of the ~1 s that loading one of the shipped configs takes. The files
    do not change during a test session, and mmengine only reads the parsed data. Same
    configs, same errors (a failed read is not cached).
    """
    load = _config_utils.load

    @functools.cache
    def load_yaml(path: str):
        return load(path)

    @functools.wraps(load)
    def cached_load(file, *args, **kwargs):
        if isinstance(file, str) and file.endswith('.yml') and not args and not kwargs:
            return load_yaml(file)
        return load(file, *args, **kwargs)

    _config_utils.load = cached_load


_parse_each_metafile_once()


def _share_the_cores_between_xdist_workers() -> None:
    """Give each pytest-xdist worker its share of the cores, for torch and for the tools it runs.

    Two workers each running torch with one thread per core would put twice as many busy
    threads as cores on the machine (OpenMP threads spin while they wait): slower than one
    worker. The environment variable reaches the tools and training processes the tests start.
    """
    workers = int(os.environ.get('PYTEST_XDIST_WORKER_COUNT', '1'))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ['OMP_NUM_THREADS'] = str(threads)
        torch.set_num_threads(threads)


_share_the_cores_between_xdist_workers()


#: Tests that take minutes (the short demos train a model from scratch, once per task for the
#: tests of the trained model and of its export). Under pytest-xdist the tests of one task (the
#: id in brackets) are a work unit of their own, and these units are handed out first, so that
#: they run side by side from the start (in their file they would run one after another on
#: one worker).
LONG_TESTS = ('tests/demo/test_run.py::test_short_demo_beats_the_untrained_model[',
              'tests/demo/test_run.py::test_short_demo_export_gives_pytorchs_metrics[')


def _work_unit(nodeid: str) -> str:
    """The test's file (``--dist loadfile``), or its file and id for :data:`LONG_TESTS`."""
    file = nodeid.split('::', 1)[0]
    if nodeid.startswith(LONG_TESTS):
        return f'{file}[{nodeid.split("[", 1)[1]}'
    return file


def pytest_collection_modifyitems(config, items) -> None:
    """Under pytest-xdist (``make test``), the order the workers hand out units in: the long
    tests first, then the files with the most tests first (pytest-xdist's own order, which
    ``--no-loadscope-reorder`` in the Makefile turns off to keep this one). A single process
    keeps pytest's order."""
    if 'PYTEST_XDIST_WORKER' not in os.environ:
        return
    sizes: dict[str, int] = {}
    for item in items:
        sizes[_work_unit(item.nodeid)] = sizes.get(_work_unit(item.nodeid), 0) + 1
    first = {unit: index for index, unit in enumerate(sizes)}
    items.sort(key=lambda item: (not item.nodeid.startswith(LONG_TESTS),
                                 -sizes[_work_unit(item.nodeid)], first[_work_unit(item.nodeid)]))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the :data:`LONG_TESTS` as units of their own."""
    if config.getvalue('dist') != 'loadfile':
        return None
    from xdist.scheduler import LoadFileScheduling

    class LongTestsApart(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _work_unit(nodeid)

    return LongTestsApart(config, log)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected|| in float64."""
    actual, expected = actual.double(), expected.double()
    return ((actual - expected).norm() / expected.norm().clamp_min(1e-12)).item()


@contextlib.contextmanager
def nan_for_uninitialised_memory():
    """PyTorch fills each tensor it allocates without values (``torch.empty``,
    ``torch.Tensor(n)``) with NaN meanwhile (its deterministic mode), so a weight that nothing
    initialises is NaN every time rather than whatever the allocator returns."""
    deterministic = torch.utils.deterministic
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled(),
                deterministic.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True)
    deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        deterministic.fill_uninitialized_memory = previous[2]


def non_finite_entries(module: torch.nn.Module) -> list[str]:
    """The names of ``module``'s parameters and buffers that hold a NaN or an infinity."""
    return [name for name, tensor in module.state_dict().items()
            if tensor.is_floating_point() and not torch.isfinite(tensor).all()]


def randomize_(module: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values of a scale that keeps activations sane.

    LayerNorm weights near 1; conv/linear weights scaled by fan-in; biases,
    layer scales and GRN parameters small but non-zero, so that every
    parameter visibly changes the output.
    """
    gen = torch.Generator().manual_seed(seed)
    norm_weights = {id(m.weight) for m in module.modules()
                    if isinstance(m, torch.nn.LayerNorm) and m.weight is not None}
    with torch.no_grad():
        for param in module.parameters():
            noise = torch.randn(param.shape, generator=gen)
            if id(param) in norm_weights:
                param.copy_(1 + 0.1 * noise)
            elif param.dim() >= 2 and param.numel() > param.shape[-1]:
                param.copy_(noise / param[0].numel() ** 0.5)
            else:
                param.copy_(0.1 * noise)
    return module


def load_packaged_config(tmp_path, base: str) -> Config:
    """Load one of mmdet's/mmseg's packaged configs the way user configs inherit it."""
    config = tmp_path / 'inherits.py'
    config.write_text(f'_base_ = [{base!r}]\n')
    return Config.fromfile(str(config))


REPO = Path(__file__).resolve().parents[1]


def narrow_options(cfg: Config) -> dict:
    """The config's depths and heads with a backbone of 1/4 of its widths (CI time)."""
    from convnext_dense.arch import ARCH_SETTINGS
    arch = ARCH_SETTINGS[cfg.model.backbone.arch]
    dims = [d // 4 for d in arch['dims']]
    options = {'model.backbone.arch': None, 'model.backbone.depths': list(arch['depths']),
               'model.backbone.dims': dims, 'model.backbone.init_cfg': None}
    if 'neck' in cfg.model:
        out_indices = cfg.model.backbone.get('out_indices', range(len(dims)))
        options['model.neck.in_channels'] = [dims[i] for i in out_indices]
    for name in ('decode_head', 'auxiliary_head'):  # the stages each head reads
        head = cfg.model.get(name)
        if head is not None and 'neck' not in cfg.model:
            stages = head.get('in_index', list(range(len(dims))))  # Mask2Former: all
            options[f'model.{name}.in_channels'] = (
                [dims[i] for i in stages] if isinstance(stages, (list, tuple)) else dims[stages])
        if head is not None and head.get('c1_in_channels'):  # DeepLabV3+'s shortcut: stage 0
            options[f'model.{name}.c1_in_channels'] = dims[0]
    return options


def load_tool(name: str) -> ModuleType:
    """Import ``tools/<name>.py`` as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / 'tools' / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool_main(name: str, *args: str, own_logger: bool = False) -> subprocess.CompletedProcess:
    """Run a tool's ``main`` in this process (fast), capturing what it prints.

    What the tool logs before its runner's logger exists goes to mmengine's current logger:
    the test's, or an earlier run's in this process; ``own_logger=True`` makes a fresh one
    current, writing into the captured stdout as a new process's would.
    """
    from mmengine.logging import MMLogger
    module = load_tool(name)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        if own_logger:
            MMLogger.get_instance(f'{name}_{uuid.uuid4().hex}')
        returncode = module.main(list(args))
    return subprocess.CompletedProcess(args, returncode, stdout.getvalue(), stderr.getvalue())


def run_tool_process(name: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    """Run a tool as users do, in its own interpreter from the repository root."""
    return subprocess.run([sys.executable, str(REPO / 'tools' / f'{name}.py'), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)
