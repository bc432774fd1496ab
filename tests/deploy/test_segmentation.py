"""Exported segmentors against mmseg: the graph's logits, and the class maps of
ONNXRuntimeSegmentor (what tools/test.py and tools/infer.py run) on resized and padded images
and on a batch of two images of different sizes.

One random-weight UperNet demo model (ConvNeXt-atto) is exported once for the module. Its test
pipeline resizes the demo pictures (96x144 here) to 107x160, which the data preprocessor pads
to 128x160 (``test_cfg=dict(size_divisor=32)``): the class map at the original size depends on
both the resizes and the crop of the padding.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnxruntime as ort
import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import DefaultScope

from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import load_config
from convnext_dense.demo.data import make_ade20k_dataset
from convnext_dense.demo.run import data_root_options
from convnext_dense.deploy.export import export_onnx
from convnext_dense.deploy.runtime import (
    ExportedModelMismatch,
    ONNXRuntimeSegmentor,
    use_onnx_runtime,
)
from tests.deploy.random_exports import paired_predictions, runtime_and_test_dataset

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / 'configs/demo/upernet_convnext_demo.py')
#: the data preprocessor pads each test image to a multiple of 32
PADDED = {'model.data_preprocessor.test_cfg': dict(size_divisor=32)}
#: mmseg's class map and the export's agree on at least this share of the pixels
AGREEMENT = 0.995


class Exported(NamedTuple):
    model: torch.nn.Module  # mmseg's EncoderDecoder with the exported weights, whole inference
    onnx_file: Path
    options: dict  # --cfg-options of the test config (data root, padding)


@pytest.fixture(scope='module')
def exported(tmp_path_factory) -> Exported:
    tmp = tmp_path_factory.mktemp('seg_export')
    data_root = make_ade20k_dataset(tmp / 'data', num_train=1, num_val=2, image_size=(96, 144),
                                    seed=3)
    options = {**PADDED, **data_root_options(Config.fromfile(SEG_DEMO), data_root)}
    torch.manual_seed(0)
    model = build_model(load_config(SEG_DEMO, options)).eval()
    torch.save({'state_dict': model.state_dict()}, tmp / 'seg.pth')
    onnx_file = export_onnx(SEG_DEMO, str(tmp / 'seg.pth'), tmp / 'onnx', cfg_options=options)
    model.test_cfg = ConfigDict(mode='whole')  # the export infers on whole images
    return Exported(model, onnx_file, options)


@pytest.fixture(scope='module')
def runtime(exported) -> ONNXRuntimeSegmentor:
    """The export as tools/test.py and tools/infer.py build it from the test config."""
    cfg = load_config(SEG_DEMO, exported.options)
    use_onnx_runtime(cfg, str(exported.onnx_file))  # tools/test.py's model config
    with DefaultScope.overwrite_default_scope('mmseg'):
        from mmseg.registry import MODELS
        model = MODELS.build(cfg.model).eval()  # as mmengine's Runner builds it
    assert isinstance(model, ONNXRuntimeSegmentor)
    return model


def test_graph_gives_the_decode_heads_logits_at_two_sizes(exported):
    info = json.loads((exported.onnx_file.parent / 'deploy.json').read_text())
    assert (info['task'], info['output_names'], info['dynamic']) == (
        'segmentation', ['seg_logits'], True)
    assert info['align_corners'] is False and 'threshold' not in info
    assert info['classes'][1] == 'circle' and info['channel_order'] == 'RGB'
    assert info['mean'] == [123.675, 116.28, 103.53]
    session = ort.InferenceSession(str(exported.onnx_file), providers=['CPUExecutionProvider'])
    assert [o.name for o in session.get_outputs()] == ['seg_logits']
    for shape in [(1, 3, 128, 160), (2, 3, 96, 224)]:
        inputs = torch.randn(*shape)
        logits = session.run(None, {'input': inputs.numpy()})[0]
        with torch.no_grad():
            expected = exported.model.decode_head(exported.model.extract_feat(inputs))
        assert logits.shape == (shape[0], 6, shape[2] // 4, shape[3] // 4) == expected.shape
        assert logits.dtype == np.float32
        torch.testing.assert_close(torch.from_numpy(logits), expected, rtol=1e-3, atol=1e-4)


def test_dataset_batches_resized_and_padded_match_mmseg(exported, runtime):
    """The test dataloader's batches, as tools/test.py's Runner feeds them (the test pipeline
    resizes 96x144 to 107x160, the preprocessor pads to 128x160): the class maps at the
    original size agree with mmseg's ``predict``."""
    cfg = load_config(SEG_DEMO, exported.options)
    _, dataset = runtime_and_test_dataset(cfg, exported.onnx_file, 'mmseg')
    assert len(dataset) == 2
    for expected, actual in paired_predictions(exported.model, runtime, dataset):
        assert actual.img_shape == (107, 160) and actual.ori_shape == (96, 144)
        assert tuple(actual.img_padding_size) == (0, 0, 0, 21)  # bottom rows of padding
        assert actual.pred_sem_seg.data.shape == (1, 96, 144)
        assert_class_maps_agree(actual, expected)


def test_a_batch_of_two_sizes_matches_mmseg(exported, runtime):
    """Two images of different sizes in one batch, padded to the larger: each image's class map
    at its original size agrees with mmseg's ``predict`` on the same batch. (mmseg's data
    preprocessor itself refuses such batches at test time; they are padded here with
    mmseg's ``stack_batch``, which it calls for one image.)"""
    from mmseg.structures import SegDataSample
    from mmseg.utils import stack_batch
    torch.manual_seed(4)
    images = [torch.randn(3, 107, 160), torch.randn(3, 75, 120)]  # normalized, as resized
    inputs, pads = stack_batch(images, size_divisor=32)
    assert inputs.shape == (2, 3, 128, 160)
    samples = []
    for image, pad, ori_shape in zip(images, pads, [(96, 144), (100, 160)]):
        sample = SegDataSample(metainfo=dict(img_shape=tuple(image.shape[1:]),
                                             ori_shape=ori_shape))
        sample.set_metainfo(pad)
        samples.append(sample)
    with torch.no_grad():
        expected = exported.model.predict(inputs, copy.deepcopy(samples))
        actual = runtime.predict(inputs, copy.deepcopy(samples))
    for one, reference, ori_shape in zip(actual, expected, [(96, 144), (100, 160)]):
        assert one.pred_sem_seg.data.shape == (1, *ori_shape)
        assert_class_maps_agree(one, reference)


def assert_class_maps_agree(actual, expected) -> None:
    """The same classes on >= 99.5 % of the pixels, and a class map that is not one class
    (a random model's maps are fragmented: every resize and crop shows on many pixels)."""
    ours, theirs = actual.pred_sem_seg.data, expected.pred_sem_seg.data
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert len(theirs.unique()) >= 2
    assert (ours == theirs).float().mean() >= AGREEMENT
    torch.testing.assert_close(actual.seg_logits.data, expected.seg_logits.data,
                               rtol=1e-3, atol=1e-3)


def test_an_export_without_the_post_processing_settings_is_refused(exported, tmp_path):
    folder = tmp_path / 'onnx'
    folder.mkdir()
    (folder / 'end2end.onnx').write_bytes(exported.onnx_file.read_bytes())
    info = json.loads((exported.onnx_file.parent / 'deploy.json').read_text())
    del info['align_corners']
    (folder / 'deploy.json').write_text(json.dumps(info))
    with pytest.raises(ExportedModelMismatch, match='deploy.json lacks align_corners; export '):
        ONNXRuntimeSegmentor(str(folder / 'end2end.onnx'), num_classes=6)
