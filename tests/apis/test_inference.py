"""tools/infer.py: a .pth or an end2end.onnx on a user's images, drawn and recorded."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import cv2
import pytest
import torch
from mmengine.config import Config

from convnext_dense.apis.infer_outputs import earlier_output
from convnext_dense.apis.inference import collect_images, inference_device, run_inference
from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import prepare_test_cfg
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


@pytest.fixture(scope='module')
def seg_checkpoint(tmp_path_factory) -> Path:
    return random_checkpoint(SEG_DEMO, tmp_path_factory.mktemp('seg') / 'seg.pth')


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
        out = tmp_path / f'out_{name}'
        for record in images:
            assert record['class_map'] == f'class_maps/{Path(record["image"]).stem}.png'
            class_map = cv2.imread(str(out / record['class_map']), cv2.IMREAD_UNCHANGED)
            assert class_map.shape == (96, 144) == (record['height'], record['width'])
            assert sum(record['pixels_per_class'].values()) == 96 * 144
            assert record['vis'] == f'vis/{Path(record["image"]).name}'
            drawn = cv2.imread(str(out / record['vis']))
            assert drawn.shape == (96, 144, 3)
        records[name] = [cv2.imread(str(out / r['class_map']), cv2.IMREAD_UNCHANGED)
                         for r in images]
    # The test pipeline resizes these 96x144 pictures to 107x160; both resize the logits back
    # (bilinear) before the argmax, so the class maps agree but for near-ties.
    for pth, onnx in zip(records['pth'], records['onnx']):
        assert (pth == onnx).mean() >= 0.995


def test_detection_records_boxes_classes_and_masks(tmp_path, pictures):
    checkpoint = random_checkpoint(DET_DEMO, tmp_path / 'det.pth')
    result = run_inference(DET_DEMO, str(checkpoint), [pictures / 'holiday_000000.jpg'],
                           tmp_path / 'out', score_thr=0.0, device='cpu')
    image = json.loads(result.predictions.read_text())['images'][0]
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
    for force in ([], ['--force']):  # --force replaces only an earlier tools/infer.py output
        result = run_tool_main('infer', SEG_DEMO, 'x.pth', str(pictures), '--out-dir', str(out),
                               *force)
        assert result.returncode == 1
        assert f'error: {out} holds files that tools/infer.py did not write (mine.txt); give ' \
               'a new or empty --out-dir' in result.stderr
        assert [p.name for p in out.iterdir()] == ['mine.txt']
        assert (out / 'mine.txt').read_text() == 'keep'


def test_ade20k_layout_images_work_too(tmp_path):
    root = make_ade20k_dataset(tmp_path / 'ade', num_train=1, num_val=1, image_size=(64, 96))
    checkpoint = random_checkpoint(SEG_DEMO, tmp_path / 'seg.pth')
    result = run_inference(SEG_DEMO, str(checkpoint), [root / 'images' / 'validation'],
                           tmp_path / 'out')
    assert len(json.loads(result.predictions.read_text())['images']) == 1


def test_repeated_names_keep_one_output_each(tmp_path, pictures, seg_checkpoint):
    """a/x.jpg and b/x.jpg keep their folders, y.jpg and y.png their suffixes."""
    first, second = sorted(pictures.glob('*.jpg'))
    for folder, name, source in (('a', 'x.jpg', first), ('b', 'x.jpg', second),
                                 ('a', 'y.jpg', second)):
        (tmp_path / folder).mkdir(exist_ok=True)
        shutil.copy(source, tmp_path / folder / name)
    cv2.imwrite(str(tmp_path / 'a' / 'y.png'), cv2.imread(str(first)))
    out = tmp_path / 'out'
    result = run_inference(SEG_DEMO, str(seg_checkpoint),
                           [tmp_path / 'a', tmp_path / 'b', tmp_path / 'a' / 'x.jpg'], out,
                           progress=False)
    records = json.loads(result.predictions.read_text())['images']
    assert [(r['vis'], r['class_map']) for r in records] == [
        ('vis/a/x.jpg', 'class_maps/a/x.png'), ('vis/a/y.jpg', 'class_maps/a/y.jpg.png'),
        ('vis/a/y.png', 'class_maps/a/y.png.png'), ('vis/b/x.jpg', 'class_maps/b/x.png')]
    for record in records:
        assert cv2.imread(str(out / record['vis'])).shape == (96, 144, 3)
        assert cv2.imread(str(out / record['class_map']), cv2.IMREAD_UNCHANGED).shape == (96, 144)
    assert (out / 'vis/a/y.png').read_bytes().startswith(b'\x89PNG')  # drawn in its own format
    assert len(list(out.rglob('*.*'))) == 2 + 2 * 4  # predictions.json(l), 4 drawings, 4 maps


def test_an_unreadable_image_is_named_and_the_others_are_predicted(tmp_path, pictures,
                                                                   seg_checkpoint):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    shutil.copy(next(pictures.glob('*.jpg')), folder / 'good.jpg')
    (folder / 'broken.jpg').write_text('not a jpeg')
    out = tmp_path / 'out'
    result = run_tool_main('infer', SEG_DEMO, str(seg_checkpoint), str(folder), '--out-dir',
                           str(out), '--device', 'cpu')
    assert result.returncode == 1
    assert f'error: 1 of 2 images could not be read (recorded with their error in ' \
           f'{out / "predictions.json"}): {folder / "broken.jpg"} (' in result.stderr
    assert '2/2' in result.stderr and 'ETA' in result.stderr  # the progress bar
    assert result.stdout == f'wrote {out / "predictions.json"} (1 of 2 images)\n'
    predictions = json.loads((out / 'predictions.json').read_text())
    assert [r['vis'] for r in predictions['images']] == ['vis/good.jpg']
    assert [f['image'] for f in predictions['failed']] == [str(folder / 'broken.jpg')]
    lines = [json.loads(line) for line in (out / 'predictions.jsonl').read_text().splitlines()]
    assert lines == predictions['failed'] + predictions['images']  # broken.jpg sorts first


class InterruptAfterFirstImage(io.StringIO):
    """stderr that is interrupted (Ctrl-C) when the progress bar reports the first image, and
    keeps what ``predictions.jsonl`` held on disk at that moment (its file still open)."""

    def __init__(self, jsonl: Path) -> None:
        super().__init__()
        self.jsonl, self.on_disk = jsonl, None

    def write(self, text: str) -> int:
        if ' 1/2,' in text:
            self.on_disk = self.jsonl.read_text()
            raise KeyboardInterrupt
        return super().write(text)


def test_records_are_on_disk_as_each_image_is_done_and_force_replaces_them(
        tmp_path, pictures, seg_checkpoint):
    out = tmp_path / 'out'
    stderr = InterruptAfterFirstImage(out / 'predictions.jsonl')
    with contextlib.redirect_stderr(stderr), pytest.raises(KeyboardInterrupt):
        run_inference(SEG_DEMO, str(seg_checkpoint), [pictures], out)
    lines = stderr.on_disk.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])['vis'] == 'vis/holiday_000000.jpg'
    assert (out / 'vis/holiday_000000.jpg').is_file()
    assert not (out / 'predictions.json').exists()  # written when a run ends

    # the interrupted run's folder is an earlier output: replaced with --force only
    second = str(pictures / 'holiday_000001.jpg')
    result = run_tool_main('infer', SEG_DEMO, str(seg_checkpoint), second, '--out-dir', str(out))
    assert result.returncode == 1
    assert f'{out} holds an earlier tools/infer.py output (3 files); pass --force to replace ' \
           'it' in result.stderr
    result = run_tool_main('infer', SEG_DEMO, str(seg_checkpoint), second, '--out-dir',
                           str(out), '--force', '--no-progress')
    assert result.returncode == 0, result.stderr
    assert result.stderr == ''
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob('*')) == [
        'class_maps', 'class_maps/holiday_000001.png', 'predictions.json', 'predictions.jsonl',
        'vis', 'vis/holiday_000001.jpg']


def test_device_option():
    with pytest.raises(ValueError, match="--device cuda: m.onnx runs on ONNX Runtime's CPU "
                                         'execution provider here; give --device cpu'):
        inference_device('cuda', 'm.onnx')
    with pytest.raises(ValueError, match='--device tpu: expected cpu, cuda or cuda:N'):
        inference_device('tpu', 'm.pth')
    assert inference_device(None, 'm.onnx') == 'cpu' == inference_device('cpu', 'm.onnx')
    if torch.cuda.is_available():
        assert inference_device(None, 'm.pth') == 'cuda'
        count = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f'--device cuda:{count}: this machine has {count} '
                                             'CUDA device'):
            inference_device(f'cuda:{count}', 'm.pth')
    else:
        assert inference_device(None, 'm.pth') == 'cpu'
        with pytest.raises(ValueError, match='--device cuda:1: no CUDA device is available'):
            inference_device('cuda:1', 'm.pth')


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
def test_a_pth_runs_on_the_gpu(tmp_path, pictures, seg_checkpoint):
    maps = {}
    for device in ('cpu', 'cuda'):
        result = run_inference(SEG_DEMO, str(seg_checkpoint), [pictures], tmp_path / device,
                               device=device, progress=False)
        record = json.loads(result.predictions.read_text())['images'][0]
        maps[device] = cv2.imread(str(tmp_path / device / record['class_map']),
                                  cv2.IMREAD_UNCHANGED)
    assert (maps['cpu'] == maps['cuda']).mean() >= 0.99


def test_an_output_of_the_earlier_layout_is_recognised(tmp_path):
    """predictions.json without 'vis' (drawings were vis/<stem>.jpg, class maps named by the
    path the tool was given): --force replaces it; a file no record names is not taken."""
    out = tmp_path / 'out'
    (out / 'vis').mkdir(parents=True)
    (out / 'class_maps').mkdir()
    (out / 'vis' / 'x.jpg').write_bytes(b'drawing')
    (out / 'class_maps' / 'x.png').write_bytes(b'class map')
    record = dict(image='pictures/x.jpg', height=1, width=1,
                  class_map=str(out / 'class_maps' / 'x.png'), pixels_per_class={})
    (out / 'predictions.json').write_text(json.dumps(dict(images=[record])))
    files, foreign = earlier_output(out)
    assert foreign == []
    assert sorted(p.relative_to(out).as_posix() for p in files) == [
        'class_maps/x.png', 'predictions.json', 'vis/x.jpg']
    (out / 'vis' / 'y.jpg').write_bytes(b'mine')
    assert earlier_output(out)[1] == ['vis/y.jpg']


def test_an_onnx_needs_the_runtime_of_the_deploy_layer(tmp_path, pictures):
    """The apis layer does not import deploy: given an .onnx without the runtime that runs it
    (what tools/infer.py and tools/test.py pass), it refuses by name and writes nothing."""
    onnx_file = str(tmp_path / 'm.onnx')
    words = (r'm\.onnx: an exported model runs with ONNX Runtime: use tools/test\.py or '
             r'tools/infer\.py, or pass the runtime from convnext_dense\.deploy\.runtime')
    with pytest.raises(ValueError, match=words):
        run_inference(SEG_DEMO, onnx_file, [pictures], tmp_path / 'out', progress=False)
    assert not (tmp_path / 'out').exists()
    with pytest.raises(ValueError, match=words):
        prepare_test_cfg(SEG_DEMO, onnx_file, str(tmp_path / 'work'))
