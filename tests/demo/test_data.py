"""convnext_dense.demo.data: deterministic scenes, loadable by mmdet/mmseg, idempotent writes."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import cv2
import mmdet.datasets  # noqa: F401  (registers mmdet's datasets and transforms)
import mmseg.datasets  # noqa: F401  (registers mmseg's datasets and transforms)
import numpy as np
import pytest
import torch
from mmdet.datasets import CocoDataset
from mmdet.evaluation import CocoMetric
from mmengine.registry import DefaultScope
from mmseg.datasets import ADE20KDataset, BaseSegDataset
from mmseg.evaluation import IoUMetric

from convnext_dense.demo.data import (
    DEMO_CLASSES,
    MANIFEST,
    MIN_VISIBLE_AREA,
    SEG_CLASSES,
    ade20k_metainfo,
    make_ade20k_dataset,
    make_coco_dataset,
    render_scene,
)
from tests.conftest import run_tool_main, run_tool_process

SMALL = dict(num_train=4, num_val=6, image_size=(128, 160), seed=1)
# mmseg's own ADE20K config passes reduce_zero_label to LoadAnnotations, which warns about it.
pytestmark = pytest.mark.filterwarnings('ignore:`reduce_zero_label` will be deprecated')


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob('*')) if p.is_file()}


def mtimes(root: Path) -> dict[str, int]:
    return {p.relative_to(root).as_posix(): p.stat().st_mtime_ns
            for p in root.rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def coco_root(tmp_path_factory) -> Path:
    return make_coco_dataset(tmp_path_factory.mktemp('coco'), **SMALL)


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory) -> Path:
    return make_ade20k_dataset(tmp_path_factory.mktemp('ade'), **SMALL)


# --- the scenes -----------------------------------------------------------------------


@pytest.mark.parametrize('seed', range(5))
def test_scene_masks_are_disjoint_visible_and_labelled(seed):
    scene = render_scene(np.random.default_rng(seed), (128, 160))
    assert scene.image.shape == (128, 160, 3) and scene.image.dtype == np.uint8
    assert 1 <= len(scene.masks) == len(scene.labels) <= 6
    assert scene.masks.sum(axis=0).max() == 1  # disjoint: one owner per pixel
    assert (scene.masks.sum(axis=(1, 2)) >= MIN_VISIBLE_AREA).all()
    assert set(scene.labels.tolist()) <= set(range(len(DEMO_CLASSES)))
    seg = scene.semantic_map()
    for mask, label in zip(scene.masks, scene.labels):
        assert (seg[mask] == label + 1).all()
    assert (seg[~scene.masks.any(axis=0)] == 0).all()
    # objects stand out: their pixels are far more saturated than the background's
    hsv = cv2.cvtColor(scene.image, cv2.COLOR_RGB2HSV)
    assert hsv[..., 1][seg > 0].mean() > hsv[..., 1][seg == 0].mean() + 50


@pytest.mark.parametrize('make', [make_coco_dataset, make_ade20k_dataset])
def test_same_arguments_give_byte_identical_files_and_another_seed_differs(tmp_path, make):
    first = tree(make(tmp_path / 'a', **SMALL))
    second = tree(make(tmp_path / 'b', **SMALL))
    assert sum(k.endswith('.jpg') for k in first) == SMALL['num_train'] + SMALL['num_val']
    assert first == second
    other = tree(make(tmp_path / 'c', **{**SMALL, 'seed': 2}))
    assert other.keys() == first.keys()
    assert all(other[k] != first[k] for k in first if k.endswith('.jpg'))


def test_both_layouts_hold_the_same_images(coco_root, ade_root):
    for split, folder in (('train', 'training'), ('val', 'validation')):
        coco = sorted((coco_root / split).glob('*.jpg'))
        assert [p.name for p in coco] == [f'{i:06d}.jpg' for i in range(SMALL[f'num_{split}'])]
        for path in coco:
            assert path.read_bytes() == (ade_root / 'images' / folder / path.name).read_bytes()


# --- COCO through mmdet ----------------------------------------------------------------


def coco_dataset(root: Path, split: str) -> CocoDataset:
    with DefaultScope.overwrite_default_scope('mmdet'):
        return CocoDataset(
            data_root=str(root), ann_file=f'annotations/instances_{split}.json',
            data_prefix=dict(img=f'{split}/'), metainfo=dict(classes=DEMO_CLASSES),
            test_mode=True,
            pipeline=[dict(type='LoadImageFromFile'),
                      dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                      dict(type='PackDetInputs')])


def test_coco_loads_through_mmdet_with_masks_matching_boxes_and_labels(coco_root, ade_root):
    dataset = coco_dataset(coco_root, 'val')
    assert len(dataset) == SMALL['num_val']
    assert dataset.metainfo['classes'] == DEMO_CLASSES
    num_instances = 0
    for sample in dataset:
        assert tuple(sample['inputs'].shape) == (3, *SMALL['image_size'])
        gt = sample['data_samples'].gt_instances
        masks = gt.masks.masks.astype(bool)
        assert masks.shape == (len(gt), *SMALL['image_size']) and len(gt) >= 1
        assert (masks.sum(axis=(1, 2)) >= MIN_VISIBLE_AREA).all()
        assert masks.sum(axis=0).max() == 1
        mask_boxes = gt.masks.get_bboxes(dst_type='hbox').tensor
        assert torch.allclose(mask_boxes, gt.bboxes.tensor, atol=1)
        # the label map written for ADE20K says the same thing about every pixel (1 = bg)
        name = Path(sample['data_samples'].img_path).stem
        seg = cv2.imread(str(ade_root / 'annotations/validation' / f'{name}.png'),
                         cv2.IMREAD_UNCHANGED)
        for mask, label in zip(masks, gt.labels.tolist()):
            assert (seg[mask] == label + 2).all()
        assert (seg[~masks.any(axis=0)] == 1).all()
        num_instances += len(gt)
    assert num_instances >= 2 * SMALL['num_val']


def coco_map(dataset: CocoDataset, ann_file: Path, shift_labels: int = 0) -> dict[str, float]:
    """CocoMetric on predictions copied from the ground truth."""
    metric = CocoMetric(ann_file=str(ann_file), metric=['bbox', 'segm'])
    metric.dataset_meta = dataset.metainfo
    for sample in dataset:
        data_sample = sample['data_samples']
        gt = data_sample.gt_instances
        data_sample.pred_instances = gt.new(
            bboxes=gt.bboxes.tensor, scores=torch.ones(len(gt)),
            labels=(gt.labels + shift_labels) % len(DEMO_CLASSES),
            masks=torch.from_numpy(gt.masks.masks.astype(bool)))
        metric.process({}, [data_sample.to_dict()])
    return metric.evaluate(len(dataset))


def test_coco_metric_gives_map_one_on_ground_truth_predictions(coco_root):
    dataset = coco_dataset(coco_root, 'val')
    ann_file = coco_root / 'annotations/instances_val.json'
    perfect = coco_map(dataset, ann_file)
    assert perfect['coco/bbox_mAP'] == 1.0 and perfect['coco/segm_mAP'] == 1.0
    wrong = coco_map(dataset, ann_file, shift_labels=1)
    assert wrong['coco/bbox_mAP'] == 0.0 and wrong['coco/segm_mAP'] == 0.0


def test_coco_annotation_file_fields(coco_root):
    coco = json.loads((coco_root / 'annotations/instances_train.json').read_text())
    assert [(c['id'], c['name']) for c in coco['categories']] == list(
        enumerate(DEMO_CLASSES, start=1))
    assert len(coco['images']) == SMALL['num_train']
    ann = coco['annotations'][0]
    assert ann['iscrowd'] == 0 and isinstance(ann['segmentation']['counts'], str)
    assert ann['segmentation']['size'] == list(SMALL['image_size'])
    assert len({a['id'] for a in coco['annotations']}) == len(coco['annotations'])


# --- ADE20K layout through mmseg --------------------------------------------------------


def seg_dataset(root: Path, cls: type = BaseSegDataset, **kwargs) -> BaseSegDataset:
    """``cls`` with ADE20K's settings, the way the demo config builds it."""
    if cls is BaseSegDataset:
        kwargs = dict(img_suffix='.jpg', seg_map_suffix='.png', reduce_zero_label=True,
                      metainfo=ade20k_metainfo(), **kwargs)
    with DefaultScope.overwrite_default_scope('mmseg'):
        return cls(data_root=str(root), **kwargs,
                   data_prefix=dict(img_path='images/validation',
                                    seg_map_path='annotations/validation'),
                   pipeline=[dict(type='LoadImageFromFile'),
                             dict(type='LoadAnnotations', reduce_zero_label=True),
                             dict(type='PackSegInputs')])


def test_ade20k_dataset_loads_it_and_every_pixel_has_a_label(ade_root):
    dataset = seg_dataset(ade_root, ADE20KDataset)
    assert len(dataset) == SMALL['num_val'] and dataset.reduce_zero_label
    for sample in dataset:
        labels = sample['data_samples'].gt_sem_seg.data
        assert tuple(labels.shape) == (1, *SMALL['image_size'])
        assert 0 <= labels.min() and labels.max() < len(SEG_CLASSES)  # no 255: nothing ignored
        assert (labels == 0).any() and (labels > 0).any()


def test_ade20k_dataset_refuses_our_class_names_so_the_config_uses_the_base_class(ade_root):
    with pytest.raises(ValueError, match='not a subset'):
        seg_dataset(ade_root, ADE20KDataset, metainfo=ade20k_metainfo())
    dataset = seg_dataset(ade_root)
    assert dataset.metainfo['classes'] == SEG_CLASSES
    assert dataset.metainfo['palette'] == ade20k_metainfo()['palette']
    assert dataset.metainfo['label_map'] is None


def test_iou_metric_gives_miou_100_on_ground_truth_predictions(ade_root):
    dataset = seg_dataset(ade_root)
    metric = IoUMetric(iou_metrics=['mIoU'])
    metric.dataset_meta = dataset.metainfo
    present = set()
    for sample in dataset:
        data_sample = sample['data_samples']
        data_sample.set_data(dict(pred_sem_seg=data_sample.gt_sem_seg.clone()))
        present |= set(data_sample.gt_sem_seg.data.unique().tolist())
        metric.process({}, [data_sample.to_dict()])
    assert present == set(range(len(SEG_CLASSES)))  # every class is scored
    assert metric.evaluate(len(dataset))['mIoU'] == 100.0


# --- idempotency and refusal -------------------------------------------------------------


def test_second_call_rewrites_nothing_and_keeps_user_files(tmp_path):
    root = tmp_path / 'data'
    root.mkdir()
    (root / 'notes.txt').write_text('mine')
    assert make_coco_dataset(root, **SMALL) == root
    before = mtimes(root)
    assert make_coco_dataset(str(root), **SMALL) == root
    assert mtimes(root) == before
    assert (root / 'notes.txt').read_text() == 'mine'
    manifest = json.loads((root / MANIFEST).read_text())
    assert manifest['params'] == {**SMALL, 'image_size': list(SMALL['image_size'])}
    assert 'notes.txt' not in manifest['files'] and len(manifest['files']) == len(before) - 2


def test_a_deleted_file_is_restored_identically(tmp_path):
    root = make_ade20k_dataset(tmp_path / 'data', **SMALL)
    before = tree(root)
    (root / 'annotations/training/000002.png').unlink()
    make_ade20k_dataset(root, **SMALL)
    assert tree(root) == before


def test_refuses_other_parameters_in_the_same_folder(tmp_path):
    root = make_coco_dataset(tmp_path / 'data', **SMALL)
    before = tree(root)
    with pytest.raises(FileExistsError, match=str(root)):
        make_coco_dataset(root, **{**SMALL, 'seed': 2})
    with pytest.raises(FileExistsError, match='other settings'):
        make_ade20k_dataset(root, **SMALL)
    assert tree(root) == before


def test_refuses_to_overwrite_changed_or_foreign_files(tmp_path):
    root = make_coco_dataset(tmp_path / 'edited', **SMALL)
    (root / 'val/000001.jpg').write_bytes(b'edited')
    with pytest.raises(FileExistsError, match=r'edited.*val/000001\.jpg'):
        make_coco_dataset(root, **SMALL)
    assert (root / 'val/000001.jpg').read_bytes() == b'edited'

    foreign = tmp_path / 'foreign'
    (foreign / 'annotations').mkdir(parents=True)
    (foreign / 'annotations/instances_val.json').write_text('{}')
    with pytest.raises(FileExistsError, match='foreign.*instances_val.json'):
        make_coco_dataset(foreign, **SMALL)
    assert tree(foreign) == {'annotations/instances_val.json': b'{}'}


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_train=0), 'num_train must be a positive int'),
    (dict(num_val=2.5), 'num_val must be a positive int'),
    (dict(image_size=(32, 320)), r'image_size must be \(height, width\)'),
    (dict(seed=-1), 'seed must be a non-negative int'),
])
def test_invalid_arguments_are_named(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_coco_dataset(tmp_path / 'data', **kwargs)
    assert not (tmp_path / 'data').exists()


# --- the command line ----------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_tool_main('make_demo_data', *args)


def test_cli_writes_what_the_function_writes_and_reports_conflicts(tmp_path):
    args = ('--num-train', '4', '--num-val', '6', '--image-size', '128', '160', '--seed', '1')
    done = run_cli('ade20k', str(tmp_path / 'cli'), *args)
    assert done.returncode == 0, done.stderr
    assert str(tmp_path / 'cli') in done.stdout
    assert tree(tmp_path / 'cli') == tree(make_ade20k_dataset(tmp_path / 'lib', **SMALL))
    refused = run_cli('ade20k', str(tmp_path / 'cli'), *args[:-1], '7')
    assert refused.returncode == 1 and refused.stderr.startswith('error: ')
    assert str(tmp_path / 'cli') in refused.stderr


def test_cli_runs_as_a_script(tmp_path):
    done = run_tool_process('make_demo_data', 'coco', str(tmp_path / 'demo'),
                            '--num-train', '2', '--num-val', '1', '--seed', '3')
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / 'demo').rglob('*.json')) == [
        'instances_train.json', 'instances_val.json', 'manifest.json']
