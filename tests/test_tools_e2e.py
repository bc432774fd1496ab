"""tools/train.py and tools/test.py end to end on tiny generated COCO and ADE20K data.

Real configs, real dataset classes and pipelines (including the crop policy of
AutoAugment), the layer-decay constructor, the AMP wrapper (fp32 fallback on
CPU) and the real mmengine Runner; only the data and image sizes are shrunk
with --cfg-options.
"""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest
from mmengine.config import Config

from convnext_dense.demo.data import DEMO_CLASSES, make_ade20k_dataset, make_coco_dataset
from tests.conftest import narrow_options, run_tool_main, run_tool_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')
CLASSES = '[' + ','.join(DEMO_CLASSES) + ']'


def run_tool(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Run a tool as users do, in its own interpreter."""
    result = run_tool_process(tool.removesuffix('.py'), *args, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def run_tool_here(tool: str, *args: str) -> subprocess.CompletedProcess:
    """Run a tool's ``main`` in this process: the checks that repeat a tool many times (the
    interpreter's start and imports take ~6 s of each run; the runs above cover the CLI)."""
    result = run_tool_main(tool.removesuffix('.py'), *args, own_logger=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def printed_metrics(stdout: str) -> dict:
    return ast.literal_eval(stdout.strip().splitlines()[-1])


def loader_options(**settings: str) -> list[str]:
    return [f'{loader}.{key}={value}' for loader in LOADERS for key, value in settings.items()]


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory) -> Path:
    return make_coco_dataset(tmp_path_factory.mktemp('coco'), num_train=4, num_val=2,
                             image_size=(128, 160), seed=0)


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory) -> Path:
    return make_ade20k_dataset(tmp_path_factory.mktemp('ade'), num_train=4, num_val=2,
                               image_size=(128, 160), seed=0)


#: Training augmentations of the detection configs, shrunk by :func:`coco_options`: the paper's
#: AutoAugment taking its resize or its crop policy, DETR's RandomChoice of the same two, and
#: Mask2Former's large-scale jittering.
AUGMENTATIONS = ('resize', 'crop', 'detr', 'lsj')


def coco_options(root: Path, num_classes_keys: list[str], augmentation: str) -> list[str]:
    """--cfg-options that train and test a COCO config on the tiny dataset at 128x160."""
    assert augmentation in AUGMENTATIONS, augmentation
    options = loader_options(**{'dataset.data_root': f'{root}/',
                                'dataset.metainfo.classes': CLASSES,
                                'num_workers': '0', 'persistent_workers': 'False'})
    options += [f'{loader}.dataset.{key}' for loader, key in [
        ('train_dataloader', 'ann_file=annotations/instances_train.json'),
        ('train_dataloader', 'data_prefix.img=train/'),
        ('val_dataloader', 'ann_file=annotations/instances_val.json'),
        ('val_dataloader', 'data_prefix.img=val/'),
        ('test_dataloader', 'ann_file=annotations/instances_val.json'),
        ('test_dataloader', 'data_prefix.img=val/')]]
    options += [f'{e}.ann_file={root}/annotations/instances_val.json'
                for e in ('val_evaluator', 'test_evaluator')]
    policies = 'train_dataloader.dataset.pipeline.3'
    if augmentation == 'detr':  # RandomChoice of resize / resize-crop-resize
        options += [f'{policies}.transforms.0.0.scales=[(128,160)]',
                    f'{policies}.transforms.1.0.scales=[(96,160)]',
                    f'{policies}.transforms.1.1.crop_size=(64,96)',
                    f'{policies}.transforms.1.2.scales=[(128,160)]']
    elif augmentation == 'lsj':  # jitter around, crop to and pad to 128x128 (square, as
        # mmdet's 1024x1024: the resize takes (w, h), the crop and the pad (h, w))
        options += [f'{policies}.scale=(128,128)',
                    'train_dataloader.dataset.pipeline.4.crop_size=(128,128)',
                    'model.data_preprocessor.batch_augments.0.size=(128,128)']
    else:  # the paper's AutoAugment with the crop policy
        options += [
            f'{policies}.policies.0.0.scales=[(128,160),(160,200)]',
            f'{policies}.policies.1.0.scales=[(96,160),(128,160)]',
            f'{policies}.policies.1.1.crop_size=(64,96)',
            f'{policies}.policies.1.2.scales=[(128,160)]',
            f'{policies}.prob=' + ('[0.0,1.0]' if augmentation == 'crop' else '[1.0,0.0]')]
    options += [
        'val_dataloader.dataset.pipeline.1.scale=(160,128)',
        'test_dataloader.dataset.pipeline.1.scale=(160,128)',
        'model.backbone.init_cfg=None',
        'train_cfg.max_epochs=1',
        'default_hooks.logger.interval=1',
    ]
    options += [f'{key}=5' for key in num_classes_keys]
    return options


def fewer_rois(cascade: bool) -> list[str]:
    """--cfg-options that train and test an R-CNN on 64 sampled RoIs per image and 100
    proposals instead of 512 and 1000-2000: the same code on fewer rows (the paper's Cascade
    box heads run four 3x3 convolutions on every RoI of each of the three stages)."""
    stages = [f'model.train_cfg.rcnn.{i}' for i in range(3)] if cascade else [
        'model.train_cfg.rcnn']
    return [f'{stage}.sampler.num=64' for stage in stages] + [
        'model.train_cfg.rpn_proposal.max_per_img=200', 'model.test_cfg.rpn.max_per_img=100']


@pytest.mark.parametrize('config, num_classes_keys, augmentation', [
    ('mask_rcnn_convnext_t_coco.py',
     ['model.roi_head.bbox_head.num_classes', 'model.roi_head.mask_head.num_classes'], 'resize'),
    ('cascade_mask_rcnn_convnext_t_coco.py',
     [f'model.roi_head.bbox_head.{i}.num_classes' for i in range(3)]
     + ['model.roi_head.mask_head.num_classes'], 'crop'),
])
def test_detection_train_then_test(tmp_path, coco_root, config, num_classes_keys, augmentation):
    # Mask R-CNN runs the tools' command lines; Cascade the same code in this process
    run = run_tool_here if config.startswith('cascade') else run_tool
    work_dir = tmp_path / 'work'
    # the tools' path does not depend on the backbone's width: atto keeps CI short
    options = coco_options(coco_root, num_classes_keys, augmentation) + [
        'model.backbone.arch=atto', 'model.neck.in_channels=[40,80,160,320]'] + fewer_rois(
        config.startswith('cascade'))
    result = run('train.py', f'configs/{config}', '--work-dir', str(work_dir),
                 '--cfg-options', *options)
    log = result.stdout + result.stderr
    assert 'training with OptimWrapper (fp32)' in log
    assert 'ConvNeXtLayerDecayOptimizerConstructor: layer_wise decay' in log
    assert 'Epoch(train) [1][2/2]' in log  # two iterations of 2 images
    assert 'coco/bbox_mAP' in log  # validation ran after the epoch
    checkpoint = work_dir / 'epoch_1.pth'
    assert checkpoint.is_file()

    show_dir = tmp_path / 'shown'
    result = run('test.py', f'configs/{config}', str(checkpoint), '--work-dir',
                 str(tmp_path / 'test'), '--show-dir', str(show_dir), '--cfg-options', *options)
    metrics = printed_metrics(result.stdout)
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP'):
        assert 0.0 <= metrics[key] <= 1.0
    assert len(list(show_dir.rglob('*.jpg'))) == 2  # one picture per val image


def ade_options(ade_root: Path) -> list[str]:
    """The ADE20K T config on the tiny dataset: 64-pixel crops, atto-sized runs of 2 iterations."""
    return loader_options(**{'dataset.data_root': str(ade_root), 'num_workers': '0',
                                'persistent_workers': 'False'}) + [
        'train_dataloader.dataset.pipeline.2.scale=(320,64)',
        'train_dataloader.dataset.pipeline.3.crop_size=(64,64)',
        'val_dataloader.dataset.pipeline.1.scale=(320,64)',
        'test_dataloader.dataset.pipeline.1.scale=(320,64)',
        'model.data_preprocessor.size=(64,64)',
        'model.test_cfg.crop_size=(64,64)',
        'model.test_cfg.stride=(43,43)',
        'model.backbone.init_cfg=None',
        'train_cfg.max_iters=2',
        'train_cfg.val_interval=2',
        'default_hooks.checkpoint.interval=2',
        'default_hooks.logger.interval=1',
    ]


def test_segmentation_train_then_test(tmp_path, ade_root):
    work_dir = tmp_path / 'work'
    options = ade_options(ade_root)
    result = run_tool('train.py', 'configs/upernet_convnext_t_ade20k_512.py', '--work-dir',
                      str(work_dir), '--cfg-options', *options)
    log = result.stdout + result.stderr
    assert 'ConvNeXtLayerDecayOptimizerConstructor: stage_wise decay' in log
    assert 'Iter(train) [2/2]' in log and 'mIoU' in log
    checkpoint = work_dir / 'iter_2.pth'
    assert checkpoint.is_file()
    result = run_tool('test.py', 'configs/upernet_convnext_t_ade20k_512.py', str(checkpoint),
                      '--work-dir', str(tmp_path / 'test'), '--cfg-options', *options)
    metrics = printed_metrics(result.stdout)
    assert 0.0 <= metrics['mIoU'] <= 100.0 and 'aAcc' in metrics

    # The release's multi-scale + flip test, at 1/8 of the test scale (whole images).
    tta_scales = [f'tta_pipeline.1.transforms.0.{i}.scale=({int(256 * r)},{int(64 * r)})'
                  for i, r in enumerate([0.5, 0.75, 1.0, 1.25, 1.5, 1.75])]
    result = run_tool_here('test.py', 'configs/upernet_convnext_t_ade20k_512.py', str(checkpoint),
                           '--work-dir', str(tmp_path / 'tta'), '--tta',
                           '--cfg-options', *options, *tta_scales)
    assert "type='SegTTAModelWithTestCfg'" in result.stdout + result.stderr
    assert 0.0 <= printed_metrics(result.stdout)['mIoU'] <= 100.0


MASK_RCNN_CLASSES = ['model.roi_head.bbox_head.num_classes', 'model.roi_head.mask_head.num_classes']
ONE_ITERATION = ['train_cfg.max_iters=1', 'train_cfg.val_interval=1',
                 'default_hooks.checkpoint.interval=1']


def one_iteration_options(config: str, ade_root: Path, coco_root: Path) -> tuple[list[str], str]:
    """--cfg-options that train ``config`` for one iteration on the tiny datasets and validate,
    and the checkpoint that run saves."""
    if 'ade20k' in config:
        options = ade_options(ade_root) + ONE_ITERATION
        if config.startswith('mask2former'):  # shortest edge resized to one of 64/96 instead
            resize = 'train_dataloader.dataset.pipeline.2'
            options = [o for o in options if not o.startswith(resize)]
            options += ['train_dataloader.dataset.pipeline.2.scales=[64,96]',
                        'train_dataloader.dataset.pipeline.2.max_size=320']
        return options, 'iter_1.pth'
    if config.startswith('dino'):
        # 100 queries: the two-stage selection takes the top 900 of fewer tokens otherwise
        options = coco_options(coco_root, ['model.bbox_head.num_classes'], 'detr') + [
            'model.num_queries=100']
    elif config.startswith('mask2former'):  # iteration-based: 368750 iterations of LSJ crops
        options = coco_options(coco_root, ['model.panoptic_head.num_things_classes',
                                           'model.panoptic_fusion_head.num_things_classes'],
                               'lsj')
        options = [o for o in options if o != 'train_cfg.max_epochs=1'] + ONE_ITERATION + [
            'model.panoptic_head.loss_cls.class_weight=[1.0,1.0,1.0,1.0,1.0,0.1]']
    else:
        options = coco_options(coco_root, MASK_RCNN_CLASSES, 'resize') + fewer_rois(False)
    # one epoch of one iteration: 2 of the 4 training images
    return options + ['train_dataloader.dataset.indices=2'], (
        'iter_1.pth' if config.startswith('mask2former') else 'epoch_1.pth')


@pytest.mark.parametrize('config', ['deeplabv3plus_convnext_t_os8_ade20k_512.py',
                                    'deeplabv3plus_convnext_t_os16_ade20k_512.py',
                                    'upernet_convnextv2_t_ade20k_512.py',
                                    'upernet_convnextv2_b_ade20k_512.py',
                                    'mask_rcnn_convnextv2_t_coco.py',
                                    'mask_rcnn_convnextv2_b_coco.py',
                                    'dino_4scale_convnext_t_coco.py',
                                    'mask2former_convnext_t_coco.py',
                                    'mask2former_convnext_t_ade20k_512.py'])
def test_configs_beyond_the_paper_train_one_iteration(tmp_path, ade_root, coco_root, config):
    """One CPU iteration and a validation of each config with another head or a V2 backbone
    on the tiny datasets."""
    work_dir = tmp_path / 'work'
    options, checkpoint = one_iteration_options(config, ade_root, coco_root)
    if '_b_' in config:  # B's depths, settings and heads with a quarter of its widths (CI time)
        cfg = Config.fromfile(REPO / 'configs' / config)
        options += [f'{key}={value}'.replace(' ', '')
                    for key, value in narrow_options(cfg).items()]
    result = run_tool_here('train.py', f'configs/{config}', '--work-dir', str(work_dir),
                      '--cfg-options', *options)
    log = result.stdout + result.stderr
    assert 'ConvNeXtLayerDecayOptimizerConstructor' in log
    done = 'Iter(train) [1/1]' if checkpoint == 'iter_1.pth' else 'Epoch(train) [1][1/1]'
    assert done in log and ('mIoU' if 'ade20k' in config else 'coco/bbox_mAP') in log
    assert (work_dir / checkpoint).is_file()


def training_losses(log: str) -> list[str]:
    return [line.split('loss: ')[1].split()[0] for line in log.splitlines()
            if 'Iter(train)' in line and 'loss: ' in line]


def test_seed_makes_training_repeatable(tmp_path, ade_root):
    """--seed seeds weights, augmentation and drop path: same seed, same losses."""
    options = ade_options(ade_root) + [
        'model.backbone.arch=atto', 'model.backbone.drop_path_rate=0.1',
        'model.decode_head.in_channels=[40,80,160,320]', 'model.auxiliary_head.in_channels=160',
        'train_cfg.val_interval=100']
    runs = {}
    for name, seed in [('a', '5'), ('b', '5'), ('c', '6')]:
        result = run_tool_here('train.py', 'configs/upernet_convnext_t_ade20k_512.py',
                               '--work-dir', str(tmp_path / name), '--seed', seed,
                               '--cfg-options', *options)
        log = result.stdout + result.stderr
        assert f'seed: {seed}' in log
        runs[name] = training_losses(log)
    assert len(runs['a']) == 2
    assert runs['a'] == runs['b'] and runs['a'] != runs['c']
