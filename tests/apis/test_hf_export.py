"""``tools/convert_checkpoint.py --to-hf``: this project's UperNets as transformers models.

A small UperNet of the T config gets random non-trivial weights (layer scale or GRN, norms,
BatchNorm statistics away from their initial values), is written as an mmengine checkpoint
and exported; transformers' own ``UperNetForSemanticSegmentation.from_pretrained`` and
``pipeline('image-segmentation')`` read the directory, and its logits (and the auxiliary
head's) equal this project's ``encode_decode`` on a non-square input.
"""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from mmengine.config import Config
from PIL import Image
from transformers import UperNetForSemanticSegmentation, pipeline

from convnext_dense.apis.hf_export import export_to_hf
from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import load_config
from convnext_dense.checkpoint.errors import CheckpointError
from tests.checkpoint.layouts.upernet_reference import (
    CLASSES,
    dense_auxiliary_logits,
    dense_logits,
    hf_logits,
    randomize_model_,
    write_small_config,
)
from tests.conftest import REPO, relative_error, run_tool_main

#: name -> (V2 backbone, extra config lines): the paper's UperNet (V1, V2) and settings that
#: transformers also expresses (other pool scales, a two-conv auxiliary head with
#: concat_input, no layer scale; no auxiliary head).
VARIANTS = {
    'v1': (False, {}),
    'v2': (True, {}),
    'v1-variant': (False, dict(decode_head=dict(pool_scales=(1, 2, 4)),
                               auxiliary_head=dict(num_convs=2, concat_input=True),
                               backbone=dict(layer_scale_init_value=0.0))),
    'no-auxiliary': (False, dict(auxiliary_head=None)),
}


def small_cfg(base: Config, v2: bool = False, overrides: dict | None = None) -> Config:
    """A copy of the loaded small config with a V2 backbone and/or ``overrides``."""
    cfg = copy.deepcopy(base)
    if v2:
        cfg.merge_from_dict(dict(model=dict(backbone=dict(use_grn=True,
                                                          layer_scale_init_value=0.0))))
    cfg.merge_from_dict(dict(model=overrides or {}))
    return cfg


@pytest.fixture(scope='module')
def base_cfg(tmp_path_factory) -> Config:
    return load_config(str(write_small_config(tmp_path_factory.mktemp('config'))))


@pytest.fixture(scope='module')
def trained(base_cfg, tmp_path_factory):
    """The V1 model with random weights and its mmengine checkpoint."""
    model = randomize_model_(build_model(base_cfg), seed=0)
    checkpoint = tmp_path_factory.mktemp('trained') / 'trained.pth'
    torch.save(dict(state_dict=model.state_dict(), meta=dict(iter=160000)), checkpoint)
    return model, checkpoint


@pytest.fixture(scope='module')
def exported_v1(base_cfg, trained, tmp_path_factory):
    """(variant, model, config, checkpoint, OUT_DIR, the report) of V1, through the tool."""
    model, checkpoint = trained
    out = tmp_path_factory.mktemp('to_hf_v1') / 'hf'
    result = run_tool_main('convert_checkpoint', '--to-hf', base_cfg.filename, str(checkpoint),
                           str(out))
    assert result.returncode == 0, result.stderr
    return 'v1', model, base_cfg, checkpoint, out, result.stdout


@pytest.fixture(scope='module', params=sorted(VARIANTS))
def exported(request, base_cfg, tmp_path_factory):
    """Each variant's export; the others than V1 through :func:`export_to_hf` with the
    loaded config."""
    name = request.param
    if name == 'v1':
        return request.getfixturevalue('exported_v1')
    tmp = tmp_path_factory.mktemp(f'to_hf_{name}')
    cfg = small_cfg(base_cfg, *VARIANTS[name])
    model = randomize_model_(build_model(cfg), seed=sorted(VARIANTS).index(name))
    checkpoint = tmp / 'trained.pth'
    torch.save(dict(state_dict=model.state_dict()), checkpoint)
    export = export_to_hf(cfg, checkpoint, tmp / 'hf')
    return name, model, cfg, checkpoint, tmp / 'hf', export.report()


def test_transformers_computes_the_same_logits(exported):
    name, model, _, _, out, _ = exported
    hf = UperNetForSemanticSegmentation.from_pretrained(out).eval()
    expected, expected_aux = hf_logits(hf)
    actual = dense_logits(model)
    assert actual.shape == expected.shape == (2, len(CLASSES), 64, 96)
    assert relative_error(actual, expected) < 1e-4, relative_error(actual, expected)
    if name == 'no-auxiliary':
        assert hf.auxiliary_head is None and not hf.config.use_auxiliary_head
    else:
        actual_aux = dense_auxiliary_logits(model)
        assert relative_error(actual_aux, expected_aux) < 1e-4


def test_directory_files_and_report(exported):
    name, _, _, _, out, stdout = exported
    assert sorted(p.name for p in out.iterdir()) == [
        'config.json', 'model.safetensors', 'preprocessor_config.json']
    assert not list(out.parent.glob('.hf.*'))  # the staging directory was renamed
    config = json.loads((out / 'config.json').read_text())
    assert config['id2label'] == {str(i): c for i, c in enumerate(CLASSES)}
    assert config['backbone_config']['model_type'] == ('convnextv2' if name == 'v2'
                                                       else 'convnext')
    assert config['pool_scales'] == ([1, 2, 4] if name == 'v1-variant' else [1, 2, 3, 6])
    processor = json.loads((out / 'preprocessor_config.json').read_text())
    assert processor['image_processor_type'] == 'SegformerImageProcessor'
    assert processor['size'] == {'height': 512, 'width': 512}
    assert np.allclose(np.array(processor['image_mean']) * 255, [123.675, 116.28, 103.53])
    assert np.allclose(np.array(processor['image_std']) * 255, [58.395, 57.12, 57.375])
    assert 'processor: SegformerImageProcessor' in stdout
    assert 'note:      SegformerImageProcessor resizes every image to 512x512; the config ' \
           'tests after a resize to scale (2048, 512) keep_ratio=True with (512, 512) ' \
           'windows (stride (341, 341))' in stdout


def test_pipeline_segments_with_the_config_classes(exported_v1):
    out = exported_v1[4]
    segmenter = pipeline('image-segmentation', model=str(out))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), np.uint8))
    segments = segmenter(image)
    assert segments and {s['label'] for s in segments} <= set(CLASSES)
    assert all(s['mask'].size == (70, 50) for s in segments)


def test_out_dir_is_never_overwritten(exported_v1, tmp_path):
    _, _, config, checkpoint, out, _ = exported_v1
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match='exists and is not an empty directory'):
        export_to_hf(config, checkpoint, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (tmp_path / 'file').write_text('mine')
    result = run_tool_main('convert_checkpoint', '--to-hf', config.filename, str(checkpoint),
                           str(tmp_path / 'file'))
    assert result.returncode == 1 and 'is never overwritten' in result.stderr
    assert (tmp_path / 'file').read_text() == 'mine'
    (tmp_path / 'empty').mkdir()  # an empty directory is filled
    export_to_hf(config, checkpoint, tmp_path / 'empty')
    assert (tmp_path / 'empty' / 'model.safetensors').is_file()


@pytest.mark.parametrize('config, message', [
    ('configs/deeplabv3plus_convnext_t_os16_ade20k_512.py',
     r'a DeepLabV3\+ model \(DepthwiseSeparableASPPHead\)'),
    ('configs/mask2former_convnext_t_ade20k_512.py', r'a Mask2Former model \(Mask2FormerHead\)'),
    ('configs/mask_rcnn_convnext_t_coco.py', r'a Mask R-CNN model \(MaskRCNN\)'),
])
def test_other_models_are_refused_by_name(trained, tmp_path, config, message):
    with pytest.raises(CheckpointError, match=message):
        export_to_hf(REPO / config, trained[1], tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


GN = dict(type='GN', num_groups=4)


@pytest.mark.parametrize('overrides, message', [
    (dict(decode_head=dict(align_corners=True), auxiliary_head=dict(align_corners=True)),
     r'decode_head\.align_corners=True'),
    (dict(decode_head=dict(norm_cfg=GN), auxiliary_head=dict(norm_cfg=GN)),
     r'decode_head\.psp_modules\.0\.1 has norm GroupNorm'),
    (dict(decode_head=dict(act_cfg=dict(type='GELU'))), r'has activation GELU'),
    (dict(auxiliary_head=dict(in_index=1, in_channels=24)),
     r'auxiliary_head\.in_index=1 \(transformers: 2\)'),
    (dict(auxiliary_head=dict(kernel_size=1)), r'auxiliary_head kernel_size=1'),
    (dict(backbone=dict(output_stride=16)), r'backbone output_stride=16'),
    (dict(backbone=dict(use_grn=True)), r'a ConvNeXt V2 \(GRN\) backbone with layer scale'),
    (dict(data_preprocessor=dict(bgr_to_rgb=False)), r'feeds the model BGR images'),
])
def test_upernet_variants_transformers_does_not_compute_are_refused(base_cfg, trained, tmp_path,
                                                                     overrides, message):
    with pytest.raises(CheckpointError, match=message):
        export_to_hf(small_cfg(base_cfg, overrides=overrides), trained[1], tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_classes_must_match_the_head(base_cfg, trained, tmp_path):
    cfg = copy.deepcopy(base_cfg)
    cfg.merge_from_dict({'test_dataloader.dataset.metainfo.classes': ('a', 'b')})
    with pytest.raises(CheckpointError, match='the test dataset names 2 classes, the decode '
                                              'head has 5'):
        export_to_hf(cfg, trained[1], tmp_path / 'out')


def test_weights_that_do_not_fit_are_refused(base_cfg, trained, tmp_path):
    model, _ = trained
    state = {k: v for k, v in model.state_dict().items() if not k.startswith('decode_head.')}
    torch.save(dict(state_dict=state), tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match='missing'):
        export_to_hf(base_cfg, tmp_path / 'partial.pth', tmp_path / 'out')
    assert not (tmp_path / 'out').exists() and not list(tmp_path.glob('.out.*'))


def test_to_hf_takes_no_other_arguments(base_cfg, trained):
    with pytest.raises(SystemExit):
        run_tool_main('convert_checkpoint', '--to-hf', base_cfg.filename, str(trained[1]), 'x',
                      '--whole')
