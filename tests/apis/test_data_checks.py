"""Bad data input: each case stops tools/train.py before training, naming the file and problem.

The datasets are tiny generated COCO data; the checks run in tools/train.py's pre-flight
(`convnext_dense.runner.check_datasets`), so no model is built.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
from pathlib import Path

import pytest
from mmengine.config import DictAction

from convnext_dense.apis.data_checks import (
    InvalidAnnotationError,
    MissingImageError,
    check_coco_dataset,
    load_coco_annotations,
)
from convnext_dense.apis.runner import load_config, prepare_train_cfg
from convnext_dense.demo.data import make_coco_dataset
from tests.conftest import REPO, load_tool
from tests.test_tools_e2e import coco_options

CONFIG = str(REPO / 'configs' / 'mask_rcnn_convnext_t_coco.py')
NUM_CLASSES = ['model.roi_head.bbox_head.num_classes', 'model.roi_head.mask_head.num_classes']


@pytest.fixture
def coco(tmp_path) -> Path:
    return make_coco_dataset(tmp_path / 'coco', num_train=2, num_val=1, image_size=(64, 64))


def parsed_options(root: Path) -> dict:
    """The tiny-data ``--cfg-options`` of the end-to-end tests, parsed as the CLI does."""
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    options = coco_options(root, NUM_CLASSES, augmentation='resize')
    return parser.parse_args(['--cfg-options', *options]).cfg_options


def train_error(tmp_path: Path, root: Path) -> str:
    """Run tools/train.py's main on the data; return what it printed to stderr."""
    train = load_tool('train')
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = train.main([CONFIG, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                           *coco_options(root, NUM_CLASSES, augmentation='resize')])
    assert code == 1
    assert not (tmp_path / 'work').exists()  # stopped before the Runner was built
    return err.getvalue()


def test_valid_data_passes_the_pre_flight(tmp_path, coco):
    cfg = prepare_train_cfg(CONFIG, str(tmp_path / 'work'), cfg_options=parsed_options(coco))
    assert cfg.train_dataloader.dataset.data_root == f'{coco}/'
    assert check_coco_dataset(str(coco / 'annotations' / 'instances_train.json'),
                              str(coco / 'train')) == 2


def test_missing_annotation_file(tmp_path, coco):
    (coco / 'annotations' / 'instances_train.json').unlink()
    err = train_error(tmp_path, coco)
    assert 'COCO dataset not found: train_dataloader.dataset' in err
    assert f"expects '{coco}/annotations/instances_train.json', which does not exist" in err


@pytest.mark.parametrize('content, expected', [
    (b'images: []\n', r'is not valid JSON: Expecting value at line 1 column 1; expected a COCO '
                      r'instances file: a JSON object with "images", "annotations" and '
                      r'"categories" lists'),
    (b'\x80\x02}q\x00.', r'is not JSON text \(invalid UTF-8 at byte 0\)'),
    ('truncate', r'is not valid JSON: .* \(the file ends early: truncated\?\)'),
    (b'[{"id": 1}]', r'holds a JSON list; expected a COCO instances file'),
    (b'{"annotations": [], "categories": []}',
     r"is not in COCO format: 'images' should be a list of \{\"id\", \"file_name\", ...\}, "
     r"found no such key \(top-level keys: \['annotations', 'categories'\]\)"),
    (b'{"images": [{"id": 1}], "categories": []}',
     r'images\[0\] should be an object with "id" and "file_name", found \{\'id\': 1\}'),
])
def test_malformed_annotation_file(tmp_path, coco, content, expected):
    ann_file = coco / 'annotations' / 'instances_train.json'
    if content == 'truncate':
        content = ann_file.read_bytes()[:len(ann_file.read_bytes()) // 2]
    ann_file.write_bytes(content)
    err = train_error(tmp_path, coco)
    assert f"train_dataloader.dataset (in {CONFIG}): annotation file '{ann_file}'" in err
    with pytest.raises(InvalidAnnotationError, match=expected):
        load_coco_annotations(str(ann_file))


def test_image_listed_but_missing(tmp_path, coco):
    listed = json.loads((coco / 'annotations' / 'instances_val.json').read_text())['images']
    missing = coco / 'val' / listed[0]['file_name']
    missing.unlink()
    err = train_error(tmp_path, coco)
    assert (f"val_dataloader.dataset (in {CONFIG}): 1 of 1 images listed in "
            f"'{coco}/annotations/instances_val.json' are not on disk: '{missing}'") in err
    assert f"""Expected each "file_name" under '{coco}/val/'""" in err
    with pytest.raises(MissingImageError):
        check_coco_dataset(str(coco / 'annotations' / 'instances_val.json'), str(coco / 'val'))


def test_without_the_pre_flight_mmdet_fails_on_the_image_naming_it(coco):
    """What the toolbox does by design: LoadImageFromFile raises, it does not skip."""
    from mmdet.registry import DATASETS
    from mmengine.registry import init_default_scope
    listed = json.loads((coco / 'annotations' / 'instances_train.json').read_text())['images']
    missing = coco / 'train' / listed[0]['file_name']
    missing.unlink()
    cfg = load_config(CONFIG, parsed_options(coco))
    init_default_scope('mmdet')
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    index = next(i for i in range(len(dataset))
                 if dataset.get_data_info(i)['img_id'] == listed[0]['id'])
    with pytest.raises(FileNotFoundError, match=str(missing)):
        dataset[index]
