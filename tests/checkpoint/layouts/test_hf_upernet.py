"""Hugging Face transformers' ``UperNetForSemanticSegmentation`` into this project:
``tools/convert_checkpoint.py --whole SRC DST [--config CONFIG]``.

transformers' own UperNet (ConvNeXt V1 and V2 backbones, small) gets random non-trivial
weights (layer scale or GRN, norms, BatchNorm statistics away from their initial values)
and is saved with ``save_pretrained``; the converted checkpoint loads strictly into the
small T config's model, whose ``encode_decode`` logits (and auxiliary head) equal
transformers' on a non-square input.
"""
from __future__ import annotations

import copy
import json

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from safetensors.torch import load_file, save_file

from convnext_dense.apis.models import build_model, load_trained_weights
from convnext_dense.apis.runner import load_config
from convnext_dense.apis.whole_checkpoints import convert_whole_for_config
from convnext_dense.checkpoint.convert import convert_file
from convnext_dense.checkpoint.errors import CheckpointError
from convnext_dense.checkpoint.layouts.hf_upernet import dense_to_hf_upernet
from convnext_dense.checkpoint.whole_model import convert_whole_file
from tests.checkpoint.layouts.reference import assert_stage_features_match, pretrained_backbone
from tests.checkpoint.layouts.upernet_reference import (
    CLASSES,
    DIMS,
    INPUT,
    SEG_CONFIG,
    dense_auxiliary_logits,
    dense_logits,
    hf_logits,
    randomize_model_,
    transformers_upernet,
    write_small_config,
)
from tests.conftest import relative_error, run_tool_main

BACKBONE = dict(depths=(1, 1, 2, 1), dims=tuple(DIMS))


@pytest.fixture(scope='module')
def configs(tmp_path_factory) -> dict[str, Config]:
    """The small config (V1 and V2), loaded once."""
    path = write_small_config(tmp_path_factory.mktemp('config'))
    v1 = load_config(str(path))
    v2 = copy.deepcopy(v1)
    v2.merge_from_dict(dict(model=dict(backbone=dict(use_grn=True, layer_scale_init_value=0.0))))
    return dict(v1=v1, v2=v2)


def _convert(version: str, configs: dict[str, Config], tmp, through_tool: bool):
    hf = randomize_model_(transformers_upernet(v2=version == 'v2'), seed=int(version == 'v2'))
    hf.save_pretrained(tmp / 'hf')
    dst = tmp / 'converted.pth'
    if through_tool:
        result = run_tool_main('convert_checkpoint', '--whole', str(tmp / 'hf'), str(dst),
                               '--config', configs[version].filename)
        assert result.returncode == 0, result.stderr
        report = result.stdout
    else:
        report = convert_whole_for_config(tmp / 'hf', dst, config=configs[version]).report()
    return version, hf, tmp / 'hf', dst, report


@pytest.fixture(scope='module')
def converted_v1(configs, tmp_path_factory):
    """(version, transformers model, its directory, the converted checkpoint, the report) of
    V1, through the tool with --config."""
    return _convert('v1', configs, tmp_path_factory.mktemp('hf_upernet_v1'), through_tool=True)


@pytest.fixture(scope='module', params=['v1', 'v2'])
def converted(request, configs, tmp_path_factory):
    """V1 (:func:`converted_v1`) and V2, the latter through the function the tool calls."""
    if request.param == 'v1':
        return request.getfixturevalue('converted_v1')
    return _convert('v2', configs, tmp_path_factory.mktemp('hf_upernet_v2'), through_tool=False)


def test_converted_model_computes_transformers_logits(converted, configs):
    version, hf, _, dst, _ = converted
    model = build_model(configs[version])
    load_trained_weights(model, dst)  # every key and shape, as tools/test.py and infer.py
    expected, expected_aux = hf_logits(hf)
    actual = dense_logits(model)
    assert actual.shape == expected.shape == (2, len(CLASSES), *INPUT.shape[2:])
    assert relative_error(actual, expected) < 1e-4, relative_error(actual, expected)
    assert relative_error(dense_auxiliary_logits(model), expected_aux) < 1e-4


def test_tools_infer_takes_the_converted_checkpoint(converted_v1, configs, tmp_path):
    dst = converted_v1[3]
    image = np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8)
    cv2.imwrite(str(tmp_path / 'street.png'), image)
    result = run_tool_main('infer', configs['v1'].filename, str(dst), str(tmp_path / 'street.png'),
                           '--out-dir', str(tmp_path / 'out'), '--device', 'cpu',
                           '--no-progress')
    assert result.returncode == 0, result.stderr
    assert any((tmp_path / 'out').rglob('street*'))


def test_report_and_meta(converted):
    version, _, _, dst, report = converted
    assert 'format:    huggingface-upernet' in report
    assert 'heads:     69 tensors renamed: batch_norm -> bn (65), classifier -> conv_seg (4)' \
        in report
    assert 'hidden_states_norms -> norm3 (2)' in report
    assert 'checked:   every key and shape fits' in report
    meta = torch.load(dst, weights_only=True)['meta']
    assert meta['dataset_meta']['classes'] == list(CLASSES)
    assert len(meta['dataset_meta']['palette']) == len(CLASSES)
    assert meta['hf_config']['model_type'] == 'upernet'
    assert meta['convnext_dense']['src_format'] == 'huggingface-upernet'


def test_weights_file_alone_converts_the_same(converted, tmp_path):
    """``model.safetensors`` without its config.json; a source without BatchNorm step
    counters gets them (they change no output)."""
    _, _, directory, dst, _ = converted
    expected = torch.load(dst, weights_only=True)['state_dict']
    weights = load_file(directory / 'model.safetensors')
    save_file({k: v for k, v in weights.items() if not k.endswith('num_batches_tracked')},
              tmp_path / 'model.safetensors')
    conversion = convert_whole_file(tmp_path / 'model.safetensors')
    assert conversion.src_format == 'huggingface-upernet'
    assert len(conversion.added) == 13 and 'added:     13 BatchNorm step counters' in \
        conversion.report()
    assert conversion.state_dict.keys() == expected.keys()
    assert all(torch.equal(conversion.state_dict[k], expected[k]) for k in expected
               if not k.endswith('num_batches_tracked'))


def test_mapping_back_gives_transformers_names(converted):
    _, hf, _, dst, _ = converted
    state = torch.load(dst, weights_only=True)['state_dict']
    assert dense_to_hf_upernet(state).keys() == hf.state_dict().keys()


def test_backbone_alone_from_a_transformers_upernet(converted):
    """Without --whole, the backbone (with its stage norms) is taken, the heads dropped."""
    version, hf, directory, _, _ = converted
    conversion = convert_file(directory)
    assert conversion.src_format == 'huggingface-upernet'
    assert {k.split('.')[0] for k in conversion.dropped} == {'decode_head', 'auxiliary_head'}
    v2 = dict(use_grn=True, layer_scale_init_value=0.0) if version == 'v2' else {}
    backbone = pretrained_backbone(directory, **BACKBONE, **v2)
    with torch.no_grad():
        feature_maps = hf.backbone(torch.randn(2, 3, 64, 96, generator=torch.Generator()
                                               .manual_seed(0))).feature_maps
    assert_stage_features_match(backbone, feature_maps, normalised=True)


@pytest.mark.parametrize('as_file', [False, True], ids=['directory', 'weights file'])
def test_misfits_with_the_config_are_named(configs, tmp_path, as_file):
    hf = transformers_upernet(num_labels=7, id2label={i: f'c{i}' for i in range(7)},
                              hidden_size=24, pool_scales=[1, 2, 4], use_auxiliary_head=False)
    hf.save_pretrained(tmp_path / 'hf')
    if as_file:  # the function the tool calls, with the loaded config
        with pytest.raises(CheckpointError) as error:
            convert_whole_for_config(tmp_path / 'hf' / 'model.safetensors',
                                     tmp_path / 'dst.pth', config=configs['v1'])
        message = str(error.value)
    else:
        result = run_tool_main('convert_checkpoint', '--whole', str(tmp_path / 'hf'),
                               str(tmp_path / 'dst.pth'), '--config', configs['v1'].filename)
        assert result.returncode == 1
        message = result.stderr
    for words in ('number of labels: the checkpoint has 7, the config 5',
                  'decode head channels: the checkpoint has 24, the config 32',
                  'auxiliary head: the checkpoint has none, the config an FCNHead',
                  'number of pool scales: the checkpoint has 3, the config 4' if as_file else
                  'pool scales: the checkpoint has (1, 2, 4), the config (1, 2, 3, 6)'):
        assert words in message, message
    assert not (tmp_path / 'dst.pth').exists()


def test_pool_scale_values_and_backbone_arch_are_compared(configs, tmp_path):
    hf = transformers_upernet(v2=True, pool_scales=[1, 2, 3, 8])
    hf.save_pretrained(tmp_path / 'hf')
    with pytest.raises(CheckpointError) as error:
        convert_whole_for_config(tmp_path / 'hf', tmp_path / 'dst.pth', config=configs['v1'])
    assert 'pool scales: the checkpoint has (1, 2, 3, 8), the config (1, 2, 3, 6)' in \
        str(error.value)
    assert 'backbone arch: the checkpoint has ConvNeXt custom (depths 1-1-2-1, dims ' \
           '16-24-32-40; V2/GRN, no layer scale), the config ConvNeXt custom (depths 1-1-2-1, ' \
           'dims 16-24-32-40; V1, layer scale)' in str(error.value)


def test_upernet_with_another_backbone_is_refused(converted, tmp_path):
    _, _, directory, _, _ = converted
    (tmp_path / 'hf').mkdir()
    (tmp_path / 'hf' / 'model.safetensors').write_bytes(
        (directory / 'model.safetensors').read_bytes())
    config = json.loads((directory / 'config.json').read_text())
    config['backbone_config']['model_type'] = 'resnet'
    (tmp_path / 'hf' / 'config.json').write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="a UperNet whose backbone_config is 'resnet', not "
                                              'a ConvNeXt'):
        convert_whole_file(tmp_path / 'hf')


def test_backbone_stages_out_are_read_from_either_config_key(converted_v1, configs, tmp_path):
    """Configs that name ``out_indices`` only; a UperNet on fewer stages is refused."""
    directory = converted_v1[2]
    config = json.loads((directory / 'config.json').read_text())
    for name, out_indices in (('indices', [1, 2, 3, 4]), ('three', [2, 3, 4])):
        (tmp_path / name).mkdir()
        (tmp_path / name / 'model.safetensors').write_bytes(
            (directory / 'model.safetensors').read_bytes())
        backbone = {k: v for k, v in config['backbone_config'].items() if k != 'out_features'}
        (tmp_path / name / 'config.json').write_text(json.dumps(
            {**config, 'backbone_config': {**backbone, 'out_indices': out_indices}}))
    convert_whole_for_config(tmp_path / 'indices', tmp_path / 'dst.pth', config=configs['v1'])
    with pytest.raises(CheckpointError, match=r"out_features=\['stage2', 'stage3', 'stage4'\]; "
                                              'this project.s UperNet reads all four stages'):
        convert_whole_for_config(tmp_path / 'three', tmp_path / 'dst3.pth', config=configs['v1'])


@pytest.mark.slow
def test_t_sized_upernet_loads_strictly_into_the_t_config(tmp_path):
    """transformers' UperNet of the T config's shape (150 ADE20K labels, widths 512/256)."""
    hf = transformers_upernet(depths=[3, 3, 9, 3], hidden_sizes=[96, 192, 384, 768],
                              hidden_size=512, auxiliary_channels=256,
                              id2label={i: f'c{i}' for i in range(150)})
    hf.save_pretrained(tmp_path / 'hf')
    result = run_tool_main('convert_checkpoint', '--whole', str(tmp_path / 'hf'),
                           str(tmp_path / 't.pth'), '--config', str(SEG_CONFIG))
    assert result.returncode == 0, result.stderr
    model = build_model(load_config(str(SEG_CONFIG)))
    load_trained_weights(model, tmp_path / 't.pth')
    assert model.decode_head.num_classes == 150
