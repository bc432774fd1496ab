"""tools/infer.py: a .pth or an end2end.onnx on a user's images, drawn and recorded."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import pytest
import torch
from mmengine.config import Config

from convnext_dense.apis.inference import collect_images, run_inference
from convnext_dense.apis.models import build_model
from convnext_dense.demo.data import make_ade20k_dataset, make_coco_dataset
from convnext_dense.deploy.export import export_onnx
from tests.conftest import run_tool_main

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / 'configs/demo/upernet_convnext_demo.py')
DET_DEMO = str(REPO / 'configs/demo/mask_rcnn_convnext_demo.py')


def random_checkpoint(config: str, path: Path) -> Path:
    torch.manual_seed(0)
    torch.save({'state_dict': build_model(Config.fromfile(config)).state_dict()}, path)
    return path


@pytest.fixture(scope='module')
def pictures(tmp_path_factory) -> Path:
    """A user's folder: two pictures of other sizes than the demo's, and a text file."""
    root = make_coco_dataset(tmp_path_factory.mktemp('coco'), num_train=1, num_val=2,
                             image_size=(96, 144), seed=5)
    folder = tmp_path_factory.mktemp('pictures')
    for image in sorted((root / 'val').glob('*.jpg')):
        shutil.copy(image, folder / f'holiday_{image.name}')
    (folder / 'notes.txt').write_text('not an image')
    return folder


def test_segmentation_pth_and_onnx_agree_on_a_folder(tmp_path, pictures):
    checkpoint = random_checkpoint(SEG_DEMO, tmp_path / 'seg.pth')
    onnx_file = export_onnx(SEG_DEMO, str(checkpoint), tmp_path / 'onnx')
    records = {}
    for name, model in (('pth', checkpoint), ('onnx', onnx_file)):
        result = run_tool_main('infer', SEG_DEMO, str(model), str(pictures), '--out-dir',
                               str(tmp_path / f'out_{name}'))
        assert result.returncode == 0, result.stderr
        predictions = json.loads((tmp_path / f'out_{name}' / 'predictions.json').read_text())
        assert predictions['classes'][:2] == ['background', 'circle']
        images = predictions['images']
        assert [Path(r['image']).name for r in images] == ['holiday_000000.jpg',
                                                           'holiday_000001.jpg']
        for record in images:
            class_map = cv2.imread(record['class_map'], cv2.IMREAD_UNCHANGED)
            assert class_map.shape == (96, 144) == (record['height'], record['width'])
            assert sum(record['pixels_per_class'].values()) == 96 * 144
            drawn = cv2.imread(str(tmp_path / f'out_{name}' / 'vis' / Path(record['image']).name))
            assert drawn.shape == (96, 144, 3)
        records[name] = [cv2.imread(r['class_map'], cv2.IMREAD_UNCHANGED) for r in images]
    # The test pipeline resizes these 96x144 pictures to 107x160: mmseg resizes the logits back
    # (bilinear) before its argmax, the export's class map is resized (nearest): only pixels at
    # class borders may differ; a random model's class maps are all borders: 2.4 % differ here.
    for pth, onnx in zip(records['pth'], records['onnx']):
        assert (pth == onnx).mean() >= 0.95


def test_detection_records_boxes_classes_and_masks(tmp_path, pictures):
    checkpoint = random_checkpoint(DET_DEMO, tmp_path / 'det.pth')
    path = run_inference(DET_DEMO, str(checkpoint), [pictures / 'holiday_000000.jpg'],
                         tmp_path / 'out', score_thr=0.0)
    image = json.loads(path.read_text())['images'][0]
    assert image['instances'], 'a random Mask R-CNN scores its 100 boxes above 0.05'
    first = image['instances'][0]
    assert first['class_name'] in ('circle', 'square', 'triangle', 'star', 'ring')
    x1, y1, x2, y2 = first['bbox']
    assert 0 <= x1 <= x2 <= 144 and 0 <= y1 <= y2 <= 96
    assert first['mask']['size'] == [96, 144] and isinstance(first['mask']['counts'], str)
    assert (tmp_path / 'out' / 'vis' / 'holiday_000000.jpg').is_file()


def test_no_images_and_non_empty_output_are_refused(tmp_path, pictures):
    empty = tmp_path / 'empty'
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match='no images'):
        collect_images([empty])
    with pytest.raises(FileNotFoundError, match='no such image or folder'):
        collect_images([tmp_path / 'missing.jpg'])
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'mine.txt').write_text('keep')
    result = run_tool_main('infer', SEG_DEMO, 'x.pth', str(pictures), '--out-dir', str(out))
    assert result.returncode == 1 and 'is not empty; pass --force' in result.stderr
    assert (out / 'mine.txt').read_text() == 'keep'


def test_ade20k_layout_images_work_too(tmp_path):
    root = make_ade20k_dataset(tmp_path / 'ade', num_train=1, num_val=1, image_size=(64, 96))
    checkpoint = random_checkpoint(SEG_DEMO, tmp_path / 'seg.pth')
    path = run_inference(SEG_DEMO, str(checkpoint), [root / 'images' / 'validation'],
                         tmp_path / 'out')
    assert len(json.loads(path.read_text())['images']) == 1
