"""Hugging Face transformers' ConvNeXt and ConvNeXt V2, against transformers' own models.

Random, non-trivial weights (layer scale and GRN away from their init values) in
transformers' real classes; files and ``save_pretrained`` directories are converted
and loaded by this package, and the stage features compared with ``output_hidden_states``.
"""
from __future__ import annotations

import json

import pytest
import torch
from transformers import (
    ConvNextBackbone,
    ConvNextConfig,
    ConvNextForImageClassification,
    ConvNextModel,
    ConvNextV2Config,
    ConvNextV2ForImageClassification,
    ConvNextV2Model,
    ViTConfig,
    ViTModel,
)

from convnext_dense.checkpoint.convert import convert_file
from convnext_dense.checkpoint.errors import CheckpointError
from tests.checkpoint.layouts.reference import (
    INPUT,
    assert_stage_features_match,
    pretrained_backbone,
)
from tests.conftest import randomize_, run_tool_main

SHAPE = dict(depths=[1, 1, 2, 1], hidden_sizes=[16, 24, 32, 40])
BACKBONE = dict(depths=(1, 1, 2, 1), dims=(16, 24, 32, 40))
V1, V2 = dict(), dict(use_grn=True, layer_scale_init_value=0)

MODELS = {
    'ConvNextModel': (lambda: ConvNextModel(ConvNextConfig(**SHAPE)), V1),
    'ConvNextForImageClassification': (
        lambda: ConvNextForImageClassification(ConvNextConfig(**SHAPE, num_labels=7)), V1),
    'ConvNextV2Model': (lambda: ConvNextV2Model(ConvNextV2Config(**SHAPE)), V2),
    'ConvNextV2ForImageClassification': (
        lambda: ConvNextV2ForImageClassification(ConvNextV2Config(**SHAPE, num_labels=7)), V2),
}


def random_model(name: str, seed: int = 0) -> torch.nn.Module:
    build, _ = MODELS[name]
    model = randomize_(build(), seed=seed).eval()
    scales = [p for n, p in model.named_parameters() if 'layer_scale' in n or '.grn.' in n]
    assert scales and all(p.abs().min() > 0 for p in scales)  # not at their init values
    return model


def stage_outputs(model: torch.nn.Module) -> list[torch.Tensor]:
    with torch.no_grad():
        return list(model(INPUT, output_hidden_states=True).hidden_states[-4:])


@pytest.mark.parametrize('name', sorted(MODELS))
def test_saved_model_directory_gives_transformers_features(tmp_path, name):
    model = random_model(name)
    model.save_pretrained(tmp_path / 'saved')
    backbone = pretrained_backbone(tmp_path / 'saved', **BACKBONE, **MODELS[name][1])
    assert_stage_features_match(backbone, stage_outputs(model))


@pytest.mark.parametrize('name', ['ConvNextForImageClassification', 'ConvNextV2Model'])
@pytest.mark.parametrize('prefixed', [True, False])
def test_state_dict_files_with_or_without_the_model_prefix(tmp_path, name, prefixed):
    model = random_model(name, seed=1)
    state = model.state_dict()
    prefix = 'convnext.' if 'V2' not in name else 'convnextv2.'
    if prefixed and not name.endswith('Classification'):
        state = {prefix + k: v for k, v in state.items()}
    if not prefixed:  # the base model's keys alone, as a user may have cut them out
        state = {k.removeprefix(prefix): v for k, v in state.items()
                 if not k.startswith('classifier.')}
    src = tmp_path / 'weights.pth'
    torch.save(state, src)
    conversion = convert_file(src)
    assert conversion.src_format == 'huggingface'
    assert all(k.removeprefix(prefix).startswith(('layernorm.', 'classifier.'))
               for k in conversion.dropped)
    assert_stage_features_match(pretrained_backbone(src, **BACKBONE, **MODELS[name][1]),
                                stage_outputs(model))


def test_sharded_directory_and_the_cli(tmp_path):
    model = random_model('ConvNextV2ForImageClassification', seed=2)
    model.save_pretrained(tmp_path / 'sharded', max_shard_size='20KB')
    shards = sorted(p.name for p in (tmp_path / 'sharded').glob('model-*.safetensors'))
    assert len(shards) > 2 and (tmp_path / 'sharded' / 'model.safetensors.index.json').is_file()
    dst = tmp_path / 'converted.pth'
    result = run_tool_main('convert_checkpoint', str(tmp_path / 'sharded'), str(dst))
    assert result.returncode == 0, result.stderr
    assert 'format:    huggingface' in result.stdout
    assert ('dropped:   4 tensors: classifier.bias, classifier.weight, '
            'convnextv2.layernorm.bias, convnextv2.layernorm.weight') in result.stdout
    assert_stage_features_match(pretrained_backbone(dst, **BACKBONE, **V2), stage_outputs(model))
    (tmp_path / 'sharded' / shards[0]).unlink()
    with pytest.raises(CheckpointError, match=f'shards named in .*missing: {shards[0]}'):
        convert_file(tmp_path / 'sharded')


def test_hugging_face_backbone_keeps_its_stage_norms(tmp_path):
    """``ConvNextBackbone``'s ``hidden_states_norms`` become the output norms ``norm{i}``."""
    config = ConvNextConfig(**SHAPE, out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    model = randomize_(ConvNextBackbone(config), seed=3).eval()
    model.save_pretrained(tmp_path / 'backbone')
    backbone = pretrained_backbone(tmp_path / 'backbone', **BACKBONE)
    with torch.no_grad():
        feature_maps = model(INPUT).feature_maps
    assert_stage_features_match(backbone, feature_maps, normalised=True)


def test_config_of_another_architecture_is_refused(tmp_path):
    ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(tmp_path / 'vit')
    with pytest.raises(CheckpointError, match=r"config.json: model_type 'vit' \(architectures: "
                                              r'ViTModel\) is not a ConvNeXt; expected one of '
                                              'convnext, convnextv2, dinov3_convnext'):
        convert_file(tmp_path / 'vit')


def test_convnext_variant_this_backbone_does_not_compute_is_refused(tmp_path):
    random_model('ConvNextModel').save_pretrained(tmp_path / 'relu')
    config = json.loads((tmp_path / 'relu' / 'config.json').read_text())
    (tmp_path / 'relu' / 'config.json').write_text(json.dumps({**config, 'hidden_act': 'relu'}))
    with pytest.raises(CheckpointError, match="hidden_act='relu', but the ConvNeXt backbone "
                                              "computes hidden_act='gelu'"):
        convert_file(tmp_path / 'relu')


def test_directory_without_weights_or_config(tmp_path):
    random_model('ConvNextModel').save_pretrained(tmp_path / 'saved')
    (tmp_path / 'saved' / 'model.safetensors').unlink()
    with pytest.raises(CheckpointError, match='config.json but no weights'):
        convert_file(tmp_path / 'saved')
    (tmp_path / 'saved' / 'config.json').unlink()
    with pytest.raises(CheckpointError, match='a directory without config.json'):
        convert_file(tmp_path / 'saved')
