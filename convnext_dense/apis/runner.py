"""What tools/train.py and tools/test.py do, for mmdet and mmseg configs alike.

One entry serves both toolboxes: the toolbox is read from the config's
``default_scope`` (or, failing that, from the model type), the real mmengine
Runner does the work.
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import torch
from mmengine.config import Config
from mmengine.logging import print_log

from .config_files import rescope_package_bases, resolve_config
from .data_checks import check_coco_dataset
from .toolbox import TOOLBOXES, toolbox_of

#: What each toolbox's standard datasets expect on disk, for the missing-data message.
EXPECTED_LAYOUTS = {
    'CocoDataset': ('COCO', '''data/coco/
    annotations/instances_train2017.json
    annotations/instances_val2017.json
    train2017/*.jpg
    val2017/*.jpg'''),
    'ADE20KDataset': ('ADE20K', '''data/ade/ADEChallengeData2016/
    images/training/*.jpg      annotations/training/*.png
    images/validation/*.jpg    annotations/validation/*.png'''),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset the config points at is not on disk."""


#: Replaces a test config's model by one that runs an exported ``.onnx``: called with the
#: config, the ``.onnx`` and whether ``--tta`` was asked for.
OnnxRuntime = Callable[[Config, str, bool], None]


def is_onnx(model_file: str | os.PathLike) -> bool:
    """Whether ``model_file`` is an exported model (``end2end.onnx``) rather than weights."""
    return str(model_file).endswith('.onnx')


def refuse_onnx_without_runtime(model_file: str | os.PathLike, runtime: Any) -> None:
    """Raise a ValueError if ``runtime`` (what runs the ``.onnx`` ``model_file``) is None."""
    if runtime is None:
        raise ValueError(f'{model_file}: an exported model runs with ONNX Runtime: use '
                         'tools/test.py or tools/infer.py, or pass the runtime from '
                         'convnext_dense.deploy.runtime (use_onnx_runtime, load_onnx_model)')


def load_config(path: str, cfg_options: dict | None = None) -> Config:
    """Load a config (a file, or a shipped config by name) and apply ``--cfg-options``.

    ``configs/...`` outside a clone and ``convnext_dense::configs/...`` anywhere name the
    configs shipped in the package; values inherited from ``convnext_dense::`` bases get
    the toolbox's registry scope (:func:`~convnext_dense.apis.config_files.
    rescope_package_bases`).
    """
    cfg = Config.fromfile(resolve_config(path))
    if cfg.get('default_scope') in TOOLBOXES or cfg.get('model'):
        rescope_package_bases(cfg, toolbox_of(cfg))
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def _datasets(node: Any, where: str) -> Iterator[tuple[str, dict]]:
    """Yield ``(location, dataset cfg)`` for every dataset, through wrapper datasets."""
    if not isinstance(node, dict):
        return
    if 'dataset' in node:
        yield from _datasets(node['dataset'], f'{where}.dataset')
    if 'datasets' in node:
        for i, child in enumerate(node['datasets']):
            yield from _datasets(child, f'{where}.datasets.{i}')
    if 'dataset' not in node and 'datasets' not in node and 'type' in node:
        yield where, node


def _loads_segmentation_maps(node: Any) -> bool:
    """Whether a pipeline (nested through AutoAugment, RandomChoice, ...) reads mmdet's
    semantic or panoptic maps: ``LoadPanopticAnnotations`` or ``with_seg=True``."""
    if isinstance(node, dict):
        if node.get('with_seg') or str(node.get('type', '')).endswith('LoadPanopticAnnotations'):
            return True
        return any(_loads_segmentation_maps(value) for value in node.values())
    if isinstance(node, (list, tuple)):
        return any(_loads_segmentation_maps(item) for item in node)
    return False


def _prefixes_read(dataset: dict) -> list[str]:
    """The dataset's ``data_prefix`` folders that loading it reads.

    An mmdet dataset's ``seg`` folder is read only by a pipeline that loads segmentation
    maps: mmdet's Mask2Former instance config keeps the ``seg`` prefix of its panoptic base
    and loads no maps, so COCO without panoptic annotations trains it.
    """
    prefixes = dict(dataset.get('data_prefix') or {})
    if 'seg' in prefixes and not _loads_segmentation_maps(dataset.get('pipeline')):
        del prefixes['seg']
    return [value for value in prefixes.values() if value]


def _missing_paths(dataset: dict) -> list[str]:
    root = dataset.get('data_root') or ''
    paths = []
    if root:
        paths.append(root)
    if dataset.get('ann_file'):
        paths.append(osp.join(root, dataset['ann_file']))
    paths += [osp.join(root, value) for value in _prefixes_read(dataset)]
    missing = [p for p in paths if not osp.exists(p)]
    return missing[:1] if root in missing else missing


def _check_coco_files(dataset: dict, where: str, checked: set[tuple[str, str]]) -> None:
    """Validate a dataset's COCO JSON and the images it lists (once per file and folder)."""
    root, ann_file = dataset.get('data_root') or '', dataset.get('ann_file') or ''
    if not ann_file.endswith('.json'):
        return
    key = (osp.join(root, ann_file),
           osp.join(root, (dataset.get('data_prefix') or {}).get('img') or ''))
    if key not in checked:
        checked.add(key)
        check_coco_dataset(*key, where=where)


def check_datasets(cfg: Config, dataloaders: tuple[str, ...]) -> None:
    """Fail with one clear message when a dataset of ``dataloaders`` is not on disk.

    COCO-format annotation files are read and checked too (valid JSON, COCO keys, every
    listed image present): see :mod:`convnext_dense.data_checks`.
    """
    checked: set[tuple[str, str]] = set()
    for loader in dataloaders:
        for where, dataset in _datasets(cfg.get(loader) or {}, loader):
            missing = _missing_paths(dataset)
            if not missing:
                _check_coco_files(dataset, f'{where} (in {cfg.filename})', checked)
                continue
            name, layout = EXPECTED_LAYOUTS.get(dataset.get('type'),
                                                (dataset.get('type', 'dataset'), None))
            message = [f'{name} dataset not found: {where} (in {cfg.filename}) expects '
                       f'{missing[0]!r}, which does not exist.']
            if layout:
                message.append('Expected layout:\n' + textwrap.indent(layout, '    '))
            message.append(
                f'Point the config at your copy, e.g. --cfg-options {where}.data_root=PATH '
                '(and the same for the other dataloaders), or run the built-in demo instead: '
                '`make demo`.')
            raise DatasetNotFoundError('\n'.join(message))


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """The options tools/train.py and tools/test.py share (as in mmdet/mmseg)."""
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help='the dir to save logs, checkpoints and metrics')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, e.g. '
                             'train_dataloader.dataset.data_root=data/coco/')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def use_amp(cfg: Config) -> None:
    """Switch the optimizer wrapper to mmengine's AmpOptimWrapper (``--amp``)."""
    if cfg.optim_wrapper.get('type') != 'AmpOptimWrapper':
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.setdefault('loss_scale', 'dynamic')


def fit_optim_wrapper_to_device(cfg: Config) -> None:
    """mmengine's AmpOptimWrapper needs a GPU: on a CPU-only machine use OptimWrapper (fp32)."""
    wrapper = cfg.get('optim_wrapper')
    if wrapper and wrapper.get('type') == 'AmpOptimWrapper' and not torch.cuda.is_available():
        wrapper.type = 'OptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)
        print_log('No CUDA device: AmpOptimWrapper needs a GPU, training with OptimWrapper '
                  '(fp32) instead', logger='current')


def _replace_sync_bn(node: Any) -> int:
    """Turn every ``dict(type='SyncBN')`` under ``node`` into BN; return how many."""
    count = 0
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            count += 1
        for value in node.values():
            count += _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        count += sum(_replace_sync_bn(value) for value in node)
    return count


def fit_dist_backend_to_device(cfg: Config) -> None:
    """Distributed runs without CUDA: gloo instead of NCCL, CPU DDP, BN instead of SyncBN.

    mmengine 0.10 assumes GPUs for ``--launcher pytorch`` (NCCL, ``device_ids``,
    ``torch.cuda.set_device``); :func:`build_runner` initialises the gloo
    process group itself so that mmengine does not. Under FlexibleRunner's
    FSDPStrategy, mmengine passes ``device_id=LOCAL_RANK``, which FSDP takes for a
    CUDA device: ``device_id='cpu'`` is set instead.
    """
    if torch.cuda.is_available():
        return
    dist_cfg = cfg.setdefault('env_cfg', {}).setdefault('dist_cfg', {})
    if dist_cfg.get('backend', 'nccl') == 'nccl':
        dist_cfg['backend'] = 'gloo'
    if cfg.get('launcher', 'none') == 'none':
        return
    strategy = cfg.get('strategy') or {}
    if strategy.get('type') == 'FSDPStrategy':  # FlexibleRunner: FSDP would default to CUDA
        fsdp = strategy.get('model_wrapper') or dict(type='MMFullyShardedDataParallel')
        fsdp.setdefault('device_id', 'cpu')
        strategy['model_wrapper'] = fsdp
        print_log(f"No CUDA device: FSDPStrategy shards the model on the CPU (device_id="
                  f"{fsdp['device_id']!r})", logger='current')
    wrapper = cfg.get('model_wrapper_cfg') or dict(type='MMDistributedDataParallel',
                                                     broadcast_buffers=False)
    wrapper.setdefault('device_ids', None)  # a CPU module takes no device ids
    cfg.model_wrapper_cfg = wrapper
    replaced = _replace_sync_bn(cfg.model)
    print_log('No CUDA device: distributed training with gloo on the CPU'
              + (f', {replaced} SyncBN layer configs use BN' if replaced else ''),
              logger='current')


def default_work_dir(config_path: str) -> str:
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def set_randomness(cfg: Config, seed: int | None = None, deterministic: bool = False) -> None:
    """Apply ``--seed``/``--deterministic`` to the config's mmengine ``randomness``.

    ``randomness.seed`` seeds Python, numpy and torch on every rank (mmengine's
    ``set_random_seed``); ``randomness.deterministic=True`` also sets cuDNN's deterministic
    flags and ``torch.use_deterministic_algorithms(True)``. Values the options leave out keep
    the config's.
    """
    if seed is None and not deterministic:
        return
    randomness = dict(cfg.get('randomness') or {})
    if seed is not None:
        if seed < 0:
            raise ValueError(f'--seed must be a non-negative integer, got {seed}')
        randomness['seed'] = seed
    if deterministic:
        randomness['deterministic'] = True
    cfg.randomness = randomness


def _checkable_path(checkpoint: str) -> str | None:
    """The local file to compare with the config's model (an http(s) URL downloaded into the
    cache); None for a scheme only mmengine's file backends read (``s3://``, ...)."""
    from ..checkpoint.download import DownloadError, local_path
    from ..checkpoint.errors import CheckpointError
    scheme = checkpoint.split('://', 1)[0] if '://' in checkpoint else ''
    if scheme and scheme not in ('http', 'https', 'file'):
        return None
    try:
        return str(local_path(checkpoint))
    except DownloadError as exc:
        raise CheckpointError(str(exc)) from exc


def checkpoint_misfit(cfg: Config, checkpoint: str, local: str | None = None,
                      model_cfg: Any = None) -> str | None:
    """What in ``checkpoint``'s weights does not fit ``cfg.model`` (or ``model_cfg``; None
    when all fits).

    The model is built on the meta device (shapes only, no memory for weights) from a copy
    of its config (some models, DINO's, write into their config when built); the message
    is :func:`~convnext_dense.checkpoint.model_fit.describe_misfit`'s, as
    :func:`~convnext_dense.apis.models.load_trained_weights` gives it. ``local`` is the file
    to read when ``checkpoint`` is a URL.

    Raises:
        CheckpointError: ``checkpoint`` cannot be read.
    """
    from ..checkpoint.model_fit import describe_misfit, read_model_weights
    from .models import build_toolbox_model
    state = read_model_weights(local or checkpoint)
    model_cfg, toolbox = cfg.model if model_cfg is None else model_cfg, toolbox_of(cfg)
    try:
        with torch.device('meta'):
            model = build_toolbox_model(toolbox, model_cfg)
    except (NotImplementedError, RuntimeError):  # a module that computes at build time
        model = build_toolbox_model(toolbox, model_cfg)
    return describe_misfit(state, model, str(checkpoint), "the config's model")


def _warn_if_load_from_misfits(cfg: Config) -> None:
    """Training keeps mmengine's non-strict ``load_from`` (fine-tuning on another class count
    loads what fits) but says what does not fit, before the runner starts."""
    from ..checkpoint.errors import CheckpointError
    load_from = cfg.get('load_from')
    if not load_from or cfg.get('resume'):
        return
    try:
        local = _checkable_path(str(load_from))
        problem = checkpoint_misfit(cfg, str(load_from), local) if local else None
    except CheckpointError as exc:  # mmengine reads it (and reports its own error) later
        print_log(f'load_from could not be compared with the config\'s model: {exc}',
                  logger='current', level=logging.WARNING)
        return
    if problem:
        print_log(f'load_from: {problem}. Training goes on: the weights that fit are loaded '
                  '(mmengine\'s load_from is not strict), the others keep their '
                  'initialisation.', logger='current', level=logging.WARNING)


def prepare_train_cfg(config: str, work_dir: str | None = None, resume: str | bool | None = None,
                      amp: bool = False, cfg_options: dict | None = None,
                      launcher: str = 'none', seed: int | None = None,
                      deterministic: bool = False) -> Config:
    """Build the training config as mmdet's/mmseg's tools/train.py would."""
    cfg = load_config(config, cfg_options)
    cfg.launcher = launcher
    set_randomness(cfg, seed, deterministic)
    cfg.work_dir = work_dir or cfg.get('work_dir') or default_work_dir(config)
    if amp:
        use_amp(cfg)
    fit_optim_wrapper_to_device(cfg)
    fit_dist_backend_to_device(cfg)
    if resume == 'auto' or resume is True:
        cfg.resume, cfg.load_from = True, None
    elif resume:
        cfg.resume, cfg.load_from = True, resume
    check_datasets(cfg, ('train_dataloader', 'val_dataloader') if cfg.get('val_cfg')
                   else ('train_dataloader',))
    _warn_if_load_from_misfits(cfg)
    return cfg


def prepare_test_cfg(config: str, checkpoint: str, work_dir: str | None = None,
                     show_dir: str | None = None, tta: bool = False,
                     cfg_options: dict | None = None, launcher: str = 'none',
                     onnx_runtime: OnnxRuntime | None = None) -> Config:
    """Build the test config as mmdet's/mmseg's tools/test.py would.

    A ``.pth`` whose weights do not fit the config's model is refused here (mmengine's
    ``load_from`` would load what fits and evaluate the rest as initialised). An exported
    ``.onnx`` is tested by ``onnx_runtime`` in place of the config's model (tools/test.py
    passes :func:`convnext_dense.deploy.runtime.use_onnx_runtime`; this layer does not
    import the deploy layer above it).

    Raises:
        CheckpointError: the checkpoint cannot be read, or does not fit: what differs in
            words, then the first mismatching keys (after the dataset check).
    """
    cfg = load_config(config, cfg_options)
    toolbox = toolbox_of(cfg)
    cfg.launcher = launcher
    cfg.work_dir = work_dir or cfg.get('work_dir') or default_work_dir(config)
    cfg.load_from = checkpoint
    onnx = is_onnx(checkpoint)
    if onnx:
        refuse_onnx_without_runtime(checkpoint, onnx_runtime)
        onnx_runtime(cfg, checkpoint, tta)
    fit_dist_backend_to_device(cfg)
    if show_dir:
        hook = cfg.default_hooks.get('visualization')
        if hook is None:
            raise ValueError(f'{config}: --show-dir needs default_hooks.visualization')
        hook.draw = True
        if toolbox == 'mmdet':
            hook.test_out_dir = show_dir
        else:
            cfg.visualizer.save_dir = show_dir
    if tta:
        if 'tta_model' not in cfg or 'tta_pipeline' not in cfg:
            raise ValueError(f'{config}: --tta needs tta_model and tta_pipeline in the config')
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    check_datasets(cfg, ('test_dataloader',))
    if not onnx:
        _refuse_misfit(cfg, str(checkpoint), cfg.model.module if tta else cfg.model)
    return cfg


def _refuse_misfit(cfg: Config, checkpoint: str, model_cfg: Any) -> None:
    """Raise ``CheckpointError`` if ``checkpoint`` does not fit ``model_cfg``; a URL is
    downloaded here, once, and ``cfg.load_from`` names the local file."""
    from ..checkpoint.errors import CheckpointError
    local = _checkable_path(checkpoint)
    if local is None:
        print_log(f'{checkpoint}: read by mmengine\'s file backends; its keys are not '
                  'compared with the config\'s model', logger='current', level=logging.WARNING)
        return
    problem = checkpoint_misfit(cfg, checkpoint, local, model_cfg)
    if problem:
        raise CheckpointError(problem)
    cfg.load_from = local


def _visualizers_alive() -> set[str]:
    """Names of the mmengine visualizers (any subclass) this process has built."""
    from mmengine.visualization import Visualizer
    names: set[str] = set()
    classes = [Visualizer]
    while classes:
        cls = classes.pop()
        names.update(cls._instance_dict)
        classes.extend(cls.__subclasses__())
    return names


def give_the_run_its_own_visualizer(cfg: Config) -> None:
    """Rename ``cfg.visualizer`` when a visualizer of that name already lives in this process.

    mmengine builds a visualizer with ``get_instance(name)``: a second runner of the same
    process (the configs all say ``name='visualizer'``) would get the first run's instance and
    write its config and scalars into the first run's folder (or fail once that folder is
    gone). Without a name the Runner names it after the experiment (config name + the second
    it started): named here too, so two runs in one second do not share one either.
    """
    visualizer = cfg.get('visualizer')
    if not isinstance(visualizer, dict):
        return
    alive = _visualizers_alive()
    name = visualizer.get('name') or osp.splitext(osp.basename(cfg.filename or 'run'))[0]
    unique, number = name, 1
    while unique in alive:
        number += 1
        unique = f'{name}_{number}'
    visualizer['name'] = unique


def build_runner(cfg: Config, for_training: bool = False):
    """The real mmengine Runner (or a custom ``runner_type``) for ``cfg``.

    The project's tools run with :func:`~convnext_dense.engine.runtime_fixes.
    enable_runtime_fixes` on: mmengine checkpoints load under torch's safe loading, and
    checkpoints are written atomically.

    ``for_training=True`` (tools/train.py) first takes the work_dir's lock on rank 0
    (:mod:`~convnext_dense.engine.work_dir_lock`): a work_dir that another training run
    is using raises :class:`~convnext_dense.engine.work_dir_lock.WorkDirBusyError` before
    anything is written into it. Testing takes no lock.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from ..engine.runtime_fixes import enable_runtime_fixes
    from ..engine.work_dir_lock import lock_work_dir_for_training
    enable_runtime_fixes()
    os.makedirs(cfg.work_dir, exist_ok=True)
    if for_training:
        lock_work_dir_for_training(cfg.work_dir, cfg.get('launcher', 'none'))
    if cfg.get('launcher', 'none') == 'pytorch' and not torch.cuda.is_available():
        import torch.distributed as dist
        if not dist.is_initialized():  # mmengine's init_dist would call torch.cuda.set_device
            dist.init_process_group(backend=cfg.env_cfg.dist_cfg.get('backend', 'gloo'))
    give_the_run_its_own_visualizer(cfg)
    if 'runner_type' in cfg:
        return RUNNERS.build(cfg)
    return Runner.from_cfg(cfg)


__all__ = ['DatasetNotFoundError', 'build_runner', 'check_datasets', 'checkpoint_misfit',
           'fit_optim_wrapper_to_device', 'is_onnx', 'load_config', 'prepare_test_cfg',
           'prepare_train_cfg', 'set_randomness']
