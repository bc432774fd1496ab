"""Checkpoint conversion: every source layout, the CLI, init_cfg loading, bad input."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from mmengine.runner import load_checkpoint

from convnext_dense import ConvNeXt
from convnext_dense.checkpoint.convert import convert_checkpoint, convert_file, load_pretrained
from convnext_dense.checkpoint.errors import CheckpointError
from convnext_dense.checkpoint.io import read_checkpoint
from tests.conftest import (
    REPO,
    load_packaged_config,
    randomize_,
    relative_error,
    run_tool_main,
    run_tool_process,
)

V2 = dict(use_grn=True, layer_scale_init_value=0)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def random_timm(name: str, seed: int = 1) -> torch.nn.Module:
    return randomize_(timm.create_model(name, pretrained=False), seed=seed).eval()


def random_backbone(seed: int = 3, **kwargs) -> ConvNeXt:
    return randomize_(ConvNeXt(**kwargs), seed=seed).eval()


def classifier_extras(dim: int, prefix: str = '') -> dict[str, torch.Tensor]:
    """The final norm and 1000-way head an ImageNet classifier adds."""
    return {f'{prefix}norm.weight': torch.ones(dim), f'{prefix}norm.bias': torch.zeros(dim),
            'head.weight': torch.randn(1000, dim), 'head.bias': torch.zeros(1000)}


def official_state(backbone: ConvNeXt) -> dict[str, torch.Tensor]:
    """The official release's layout: the backbone's keys without output norms, plus head."""
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith('norm')}
    return {**state, **classifier_extras(backbone.dims[-1])}


def mmpretrain_state(backbone: ConvNeXt) -> dict[str, torch.Tensor]:
    """mmpretrain's classifier layout by hand, for the CLI test (the layout itself is tested
    against mmpretrain's real ConvNeXt in test_mmpretrain_layout.py)."""
    renames = {'.dwconv.': '.depthwise_conv.', '.pwconv1.': '.pointwise_conv1.',
               '.pwconv2.': '.pointwise_conv2.'}
    state = {}
    for key, value in backbone.state_dict().items():
        if key.startswith('norm'):
            continue
        for old, new in renames.items():
            key = key.replace(old, new)
        if '.grn.' in key:
            value = value.flatten()  # mmpretrain's GRN parameters are (C,)
        state[f'backbone.{key}'] = value
    dim = backbone.dims[-1]
    state.update({'backbone.norm3.weight': torch.ones(dim), 'backbone.norm3.bias': torch.zeros(dim),
                  'head.fc.weight': torch.randn(1000, dim), 'head.fc.bias': torch.zeros(1000)})
    return state


def features_through_norms(timm_model, backbone: ConvNeXt, x: torch.Tensor):
    with torch.no_grad():
        stages = timm_model.forward_intermediates(x, intermediates_only=True)
        return [getattr(backbone, f'norm{i}')(f) for i, f in enumerate(stages)]


def assert_features_match_timm(backbone: ConvNeXt, timm_model) -> None:
    x = torch.randn(2, 3, 64, 96)
    expected = features_through_norms(timm_model, backbone, x)
    with torch.no_grad():
        actual = backbone(x)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert relative_error(a, e) < 1e-5, f'stage {i}'


def assert_same_backbone_weights(converted: dict, backbone: ConvNeXt) -> None:
    expected = {k: v for k, v in backbone.state_dict().items() if not k.startswith('norm')}
    assert converted.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(converted[key], expected[key], rtol=0, atol=0, msg=key)


# --- every source layout -------------------------------------------------------------


@pytest.mark.parametrize('timm_name, kwargs, arch', [
    ('convnext_atto', {}, 'atto'),       # timm's conv_mlp variant: 1x1-conv MLP
    ('convnext_tiny', {}, 'tiny'),       # linear MLP
    ('convnextv2_atto', V2, 'atto'),     # GRN as mlp.grn.weight/bias of shape (C,)
])
@pytest.mark.parametrize('suffix', ['.pth', '.safetensors'])
def test_timm_files_round_trip(tmp_path, timm_name, kwargs, arch, suffix):
    reference = random_timm(timm_name)
    src = tmp_path / f'{timm_name}{suffix}'
    if suffix == '.pth':
        torch.save(reference.state_dict(), src)
    else:
        safetensors.torch.save_file(reference.state_dict(), str(src))
    conversion = convert_file(src)
    assert conversion.src_format == 'timm'
    assert conversion.arch.name == arch and conversion.arch.use_grn == bool(kwargs)
    assert sorted(conversion.dropped) == sorted(
        k for k in reference.state_dict() if k.startswith('head.'))

    backbone = ConvNeXt(arch=arch, **kwargs)
    randomize_(backbone, seed=9)  # the output norms keep these values
    backbone.init_cfg = dict(type='Pretrained', checkpoint=str(src))
    backbone.init_weights()
    assert_features_match_timm(backbone.eval(), reference)


def test_official_release_with_ema(tmp_path):
    main, ema = random_backbone(seed=3, arch='atto'), random_backbone(seed=4, arch='atto')
    checkpoint = {'model': official_state(main), 'model_ema': official_state(ema)}
    conversion = convert_checkpoint(checkpoint, 'release.pth')
    assert conversion.src_format == 'official' and conversion.arch.name == 'atto'
    assert not conversion.ema and conversion.ema_available
    assert 'use --ema' in conversion.report()
    assert sorted(conversion.dropped) == ['head.bias', 'head.weight', 'norm.bias', 'norm.weight']
    assert_same_backbone_weights(conversion.state_dict, main)
    assert_same_backbone_weights(convert_checkpoint(checkpoint, ema=True).state_dict, ema)


def test_official_v2_release():
    v2 = random_backbone(arch='atto', **V2)
    conversion = convert_checkpoint({'model': official_state(v2)})
    assert conversion.arch.use_grn and not conversion.arch.layer_scale
    assert_same_backbone_weights(conversion.state_dict, v2)


def test_whole_mmdet_checkpoint_keeps_output_norms():
    backbone = random_backbone(arch='atto')
    state = {f'backbone.{k}': v for k, v in backbone.state_dict().items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.randn(256, 40, 1, 1)
    state['rpn_head.rpn_conv.weight'] = torch.randn(256, 256, 3, 3)
    checkpoint = {'state_dict': state, 'meta': {'epoch': 36, 'mmengine_version': '0.10.7',
                                                'dataset_meta': {'classes': ('a', 'b')}}}
    conversion = convert_checkpoint(checkpoint)
    assert conversion.src_format == 'mmdet/mmseg'
    assert conversion.dropped == ['neck.lateral_convs.0.conv.weight', 'rpn_head.rpn_conv.weight']
    assert conversion.state_dict.keys() == backbone.state_dict().keys()  # norm0..3 kept
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(conversion.state_dict[key], value, rtol=0, atol=0)


def test_module_prefix_is_stripped():
    backbone = random_backbone(arch='atto')
    wrapped = {f'module.{k}': v for k, v in official_state(backbone).items()}
    assert_same_backbone_weights(convert_checkpoint({'model': wrapped}).state_dict, backbone)


# --- the command line ----------------------------------------------------------------


def run_cli_process(*args: str) -> subprocess.CompletedProcess:
    return run_tool_process('convert_checkpoint', *args)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return run_tool_main('convert_checkpoint', *args)


@pytest.fixture
def timm_pth(tmp_path) -> Path:
    src = tmp_path / 'convnext_atto.pth'
    torch.save(random_timm('convnext_atto').state_dict(), src)
    return src


def test_cli_converts_and_reports(tmp_path, timm_pth):
    dst = tmp_path / 'out' / 'converted.pth'
    before = sha256(timm_pth)
    result = run_cli_process(str(timm_pth), str(dst))
    assert result.returncode == 0, result.stderr
    assert 'format:    timm' in result.stdout
    assert 'arch:      atto (depths 2-2-6-2, dims 40-80-160-320; V1, layer scale)' in result.stdout
    assert 'dropped:   4 tensors: head.norm.weight, head.norm.bias, head.fc.weight' in result.stdout
    backbone = ConvNeXt(arch='atto')
    params = sum(v.numel() for k, v in backbone.state_dict().items() if not k.startswith('norm'))
    assert f'{params / 1e6:.2f}M parameters' in result.stdout
    assert sha256(timm_pth) == before  # the source is never modified
    # the output loads with mmengine's own loader and with init_cfg
    load_checkpoint(backbone, str(dst), strict=False)
    torch.testing.assert_close(backbone.stages[2][5].pwconv1.weight,
                               convert_file(timm_pth).state_dict['stages.2.5.pwconv1.weight'])
    from_init_cfg = ConvNeXt(arch='atto', init_cfg=dict(type='Pretrained', checkpoint=str(dst)))
    from_init_cfg.init_weights()
    torch.testing.assert_close(from_init_cfg.stages[2][5].pwconv1.weight,
                               backbone.stages[2][5].pwconv1.weight)
    assert not [p for p in dst.parent.iterdir() if p.name != dst.name]  # no temp files


@pytest.mark.parametrize('src_format', ['official', 'mmpretrain'])
def test_cli_on_each_layout(tmp_path, src_format):
    backbone = random_backbone(arch='atto')
    checkpoint = ({'model': official_state(backbone)} if src_format == 'official'
                  else {'state_dict': mmpretrain_state(backbone)})
    src, dst = tmp_path / 'src.pth', tmp_path / 'dst.pth'
    torch.save(checkpoint, src)
    result = run_cli(str(src), str(dst), '--src-format', src_format, '--arch', 'atto')
    assert result.returncode == 0, result.stderr
    assert f'format:    {src_format}' in result.stdout
    assert_same_backbone_weights(read_checkpoint(dst)['state_dict'], backbone)


def test_cli_never_overwrites_without_force(tmp_path, timm_pth):
    dst = tmp_path / 'mine.pth'
    dst.write_bytes(b'precious')
    result = run_cli(str(timm_pth), str(dst))
    assert result.returncode == 1 and 'exists; pass --force' in result.stderr
    assert dst.read_bytes() == b'precious'
    result = run_cli(str(timm_pth), str(dst), '--force')
    assert result.returncode == 0, result.stderr
    assert read_checkpoint(dst)['meta']['convnext_dense']['src_format'] == 'timm'


def test_cli_refuses_to_write_over_its_source(timm_pth):
    before = sha256(timm_pth)
    result = run_cli(str(timm_pth), str(timm_pth), '--force')
    assert result.returncode == 1 and 'is the source checkpoint' in result.stderr
    assert sha256(timm_pth) == before


def test_failed_write_leaves_no_partial_file(tmp_path, timm_pth, monkeypatch):
    from convnext_dense.checkpoint import io as checkpoint_io
    dst = tmp_path / 'dst.pth'

    def save_half_then_die(obj, f):
        f.write(b'PK\x03\x04 partial')
        raise OSError('disk full')

    monkeypatch.setattr(checkpoint_io.torch, 'save', save_half_then_die)
    from convnext_dense.checkpoint.convert import convert_and_save
    with pytest.raises(OSError, match='disk full'):
        convert_and_save(timm_pth, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['convnext_atto.pth']


def test_failed_conversion_leaves_no_file(tmp_path):
    src = tmp_path / 'resnet.pth'
    torch.save(torchvision.models.resnet18().state_dict(), src)
    dst = tmp_path / 'dst.pth'
    result = run_cli(str(src), str(dst))
    assert result.returncode == 1
    assert 'a ResNet, not a ConvNeXt' in result.stderr and str(src) in result.stderr
    assert not dst.exists()


def test_ema_flag(tmp_path):
    main, ema = random_backbone(seed=3, arch='atto'), random_backbone(seed=4, arch='atto')
    src = tmp_path / 'release.pth'
    torch.save({'model': official_state(main), 'model_ema': official_state(ema)}, src)
    result = run_cli(str(src), str(tmp_path / 'ema.pth'), '--ema')
    assert result.returncode == 0 and 'EMA weights' in result.stdout
    assert_same_backbone_weights(read_checkpoint(tmp_path / 'ema.pth')['state_dict'], ema)
    no_ema = tmp_path / 'plain.pth'
    torch.save({'model': official_state(main)}, no_ema)
    result = run_cli(str(no_ema), str(tmp_path / 'x.pth'), '--ema')
    assert result.returncode == 1 and 'no EMA weights' in result.stderr


# --- safety and bad input ------------------------------------------------------------


class CreatesAFile:
    """A pickle payload: unpickling it opens (creates) a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), 'w'))


def test_pickle_with_code_is_refused_not_run(tmp_path):
    marker = tmp_path / 'pwned'
    src = tmp_path / 'evil.pth'
    torch.save({'model': {'x': torch.zeros(1)}, 'payload': CreatesAFile(marker)}, src)
    with pytest.raises(CheckpointError, match=r'evil\.pth: refused to load.*io\.open'):
        read_checkpoint(src)
    result = run_cli(str(src), str(tmp_path / 'dst.pth'))
    assert result.returncode == 1 and 'refused to load' in result.stderr
    with pytest.raises(CheckpointError, match='refused'):
        ConvNeXt(arch='atto', init_cfg=dict(type='Pretrained', checkpoint=str(src))).init_weights()
    assert not marker.exists()
    # The payload is real: an unsafe load does run it.
    subprocess.run([sys.executable, '-c', f'import torch, tests.checkpoint.test_convert; '
                    f'torch.load({str(src)!r}, weights_only=False)'],
                   cwd=REPO, check=True, capture_output=True)
    assert marker.exists()


def test_unreadable_files(tmp_path, timm_pth):
    with pytest.raises(CheckpointError, match='missing.pth: no such file'):
        read_checkpoint(tmp_path / 'missing.pth')
    with pytest.raises(CheckpointError, match='a directory without config.json'):
        read_checkpoint(tmp_path)
    text = tmp_path / 'notes.pth'
    text.write_text('these are not weights\n')
    with pytest.raises(CheckpointError, match='notes.pth: .*not a PyTorch checkpoint'):
        read_checkpoint(text)
    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(timm_pth.read_bytes()[: os.path.getsize(timm_pth) // 2])
    with pytest.raises(CheckpointError, match='truncated.pth: truncated'):
        read_checkpoint(truncated)
    safe = tmp_path / 'model.safetensors'
    safetensors.torch.save_file({'a': torch.zeros(4)}, str(safe))
    cut = tmp_path / 'cut.safetensors'
    cut.write_bytes(safe.read_bytes()[:20])
    with pytest.raises(CheckpointError, match='cut.safetensors: truncated or not a safetensors'):
        read_checkpoint(cut)
    tensor_only = tmp_path / 'tensor.pth'
    torch.save(torch.zeros(3), tensor_only)
    with pytest.raises(CheckpointError, match='expected a dict of tensors'):
        read_checkpoint(tensor_only)


def test_arch_mismatch_names_file_arch_and_keys(tmp_path, timm_pth):
    result = run_cli(str(timm_pth), str(tmp_path / 'dst.pth'), '--arch', 'tiny')
    assert result.returncode == 1
    assert 'detected arch atto' in result.stderr and "'tiny' was requested" in result.stderr
    with pytest.raises(CheckpointError) as error:
        load_pretrained(ConvNeXt(arch='femto'), timm_pth)
    message = str(error.value)
    assert str(timm_pth) in message and 'ConvNeXt atto' in message and 'femto' in message
    assert 'downsample_layers.0.0.weight: checkpoint (40, 3, 4, 4) vs model (48, 3, 4, 4)' \
        in message
    with pytest.raises(CheckpointError, match='missing stages.0.0.grn.gamma'):
        load_pretrained(ConvNeXt(arch='atto', **V2), timm_pth)


def test_incomplete_or_foreign_keys_fail():
    backbone = random_backbone(arch='atto')
    state = official_state(backbone)
    del state['stages.2.3.pwconv1.weight']
    with pytest.raises(CheckpointError, match='missing stages.2.3.pwconv1.weight'):
        convert_checkpoint({'model': state}, 'partial.pth')
    state = official_state(backbone)
    state['stages.1.0.extra.weight'] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="official key 'stages.1.0.extra.weight' has no"):
        convert_checkpoint({'model': state})
    with pytest.raises(CheckpointError, match="timm key 'downsample_layers.0.0.weight'"):
        convert_checkpoint({'model': official_state(backbone)}, src_format='timm')


def test_init_cfg_accepts_urls_and_feeds_detectors(tmp_path, timm_pth, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    reference = random_timm('convnext_atto')
    src = tmp_path / 'weights.safetensors'
    safetensors.torch.save_file(reference.state_dict(), str(src))
    from mmdet.registry import MODELS
    from mmengine.registry import DefaultScope

    cfg = load_packaged_config(tmp_path, 'mmdet::_base_/models/mask-rcnn_r50_fpn.py')
    cfg.model.backbone = dict(type='ConvNeXt', arch='atto',
                              init_cfg=dict(type='Pretrained', checkpoint=src.as_uri()))
    cfg.model.neck.in_channels = [40, 80, 160, 320]
    with DefaultScope.overwrite_default_scope('mmdet'):
        detector = MODELS.build(cfg.model)
    detector.init_weights()
    assert not (tmp_path / 'torch_home').exists()  # a file:// URL is read in place, not cached
    assert_features_match_timm(detector.backbone.eval(), reference)


def test_registered_initialiser_can_be_named_in_init_cfg(tmp_path, timm_pth):
    """``type='ConvNeXtPretrained'`` goes through mmengine's own initialise path."""
    reference = random_timm('convnext_atto')  # the weights timm_pth holds (same seed)
    backbone = ConvNeXt(arch='atto', init_cfg=dict(type='ConvNeXtPretrained',
                                                   checkpoint=str(timm_pth)))
    backbone.init_weights()
    assert_features_match_timm(backbone.eval(), reference)
    with pytest.raises(TypeError, match='map_locaton'):
        ConvNeXt(arch='atto', init_cfg=dict(type='ConvNeXtPretrained', checkpoint=str(timm_pth),
                                            map_locaton='cpu')).init_weights()


def test_init_cfg_rejects_unknown_prefix():
    with pytest.raises(ValueError, match="prefix 'model.' is not supported"):
        ConvNeXt(arch='atto', init_cfg=dict(type='Pretrained', checkpoint='x.pth',
                                            prefix='model.')).init_weights()


# --- a backbone that builds fewer stages (out_indices=(0, 1, 2)) -----------------------------


@pytest.fixture
def log_records():
    """Messages that ``print_log(..., logger='current')`` sends during the test."""
    import logging

    from mmengine.logging import MMLogger
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_instance('test_convert_fewer_stages')
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def test_full_timm_checkpoint_into_a_backbone_with_three_stages(tmp_path, log_records):
    """The ImageNet weights of the unbuilt stage 3 are skipped and reported, not an error."""
    reference = random_timm('convnext_atto')
    src = tmp_path / 'convnext_atto.safetensors'
    safetensors.torch.save_file(reference.state_dict(), str(src))
    backbone = ConvNeXt(arch='atto', out_indices=(0, 1, 2),
                        init_cfg=dict(type='Pretrained', checkpoint=str(src)))
    backbone.init_weights()
    converted = convert_file(src).state_dict
    for key, value in backbone.state_dict().items():
        if not key.startswith('norm'):
            torch.testing.assert_close(value, converted[key], rtol=0, atol=0, msg=key)
    skipped = [m for m in log_records if 'not built' in m]
    assert skipped == ['ConvNeXt: in the checkpoint but not built (out_indices=(0, 1, 2), '
                       'num_built_stages=3), skipped: downsample_layers.3.* (4), stages.3.* (18)']
    assert not any('not in the model' in m for m in log_records)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=[0, 1, 2], intermediates_only=True)
        actual = backbone.eval()(x)
    assert len(actual) == 3
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert relative_error(a, getattr(backbone, f'norm{i}')(e)) < 1e-5, f'stage {i}'


def test_own_full_dense_checkpoint_into_a_backbone_with_fewer_stages(tmp_path, log_records):
    """A whole-model checkpoint of a 4-stage backbone: stage 3 and norm3 are reported."""
    full = random_backbone(arch='atto')
    src = tmp_path / 'mask_rcnn.pth'
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in full.state_dict().items()}}, src)
    backbone = ConvNeXt(arch='atto', out_indices=(1, 0))
    load_pretrained(backbone, src)
    assert backbone.state_dict().keys() <= full.state_dict().keys()
    for key, value in backbone.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key], rtol=0, atol=0, msg=key)
    assert any('not built (out_indices=(1, 0), num_built_stages=2), skipped: '
               'downsample_layers.2.* (4), stages.2.* (54), downsample_layers.3.* (4), '
               'stages.3.* (18)' in m for m in log_records), log_records
    assert any(m == 'ConvNeXt: in the checkpoint but not in the model: norm2.bias, '
               'norm2.weight, norm3.bias, norm3.weight' for m in log_records), log_records


def test_fewer_stages_still_fail_on_other_mismatches(timm_pth):
    # another arch in the built stages
    with pytest.raises(CheckpointError, match=r'downsample_layers\.0\.0\.weight: checkpoint '
                                              r'\(40, 3, 4, 4\) vs model \(48, 3, 4, 4\)'):
        load_pretrained(ConvNeXt(arch='femto', out_indices=(0, 1, 2)), timm_pth)
    # another arch in the unbuilt stage only: the weights do not describe the model's arch
    with pytest.raises(CheckpointError) as error:
        load_pretrained(ConvNeXt(depths=(2, 2, 6, 3), dims=(40, 80, 160, 320),
                                 out_indices=(0, 1, 2)), timm_pth)
    assert 'ConvNeXt atto' in str(error.value) and 'depths 2-2-6-3' in str(error.value)
    assert 'missing stages.3.2.' in str(error.value)
    with pytest.raises(CheckpointError) as error:
        load_pretrained(ConvNeXt(depths=(2, 2, 6, 2), dims=(40, 80, 160, 384),
                                 out_indices=(0,)), timm_pth)
    assert 'downsample_layers.3.1.weight: checkpoint (320, 160, 2, 2) vs model ' \
        '(384, 160, 2, 2)' in str(error.value)
    # V1 weights into a V2 backbone: the built stages' GRN parameters are missing
    with pytest.raises(CheckpointError, match='missing stages.0.0.grn.gamma'):
        load_pretrained(ConvNeXt(arch='atto', out_indices=(0, 1, 2), **V2), timm_pth)
