"""What the benchmark measures: the official design as released, and mmpretrain's state."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from convnext_dense.benchmark.baselines import (
    OfficialBlock,
    OfficialConvNeXt,
    OfficialLayerNorm,
    Variant,
    build_backbone,
    make_input,
    mmpretrain_status,
    official_convnext,
)
from convnext_dense.models.backbone import ConvNeXt
from tests.conftest import randomize_, relative_error


def test_official_baseline_loads_our_state_dict_and_matches_ours():
    # two independent implementations of the same network: outputs and gradients must agree
    torch.manual_seed(0)
    ours = randomize_(build_backbone(Variant('ours'), 'atto'))
    official = official_convnext('atto')
    assert list(official.state_dict()) == list(ours.state_dict())
    official.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 96)
    results = []
    for model in (ours, official):
        outs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, [p.grad for p in model.parameters()]))
    (ours_outs, ours_grads), (official_outs, official_grads) = results
    assert [o.shape for o in official_outs] == [o.shape for o in ours_outs]
    for a, b in zip(official_outs, ours_outs):
        assert relative_error(a, b) < 1e-5
    for a, b in zip(official_grads, ours_grads):
        assert relative_error(a, b) < 1e-4


def test_official_baseline_is_built_from_the_released_modules_only():
    model = official_convnext('atto', out_indices=(1, 3))
    ours_types = {type(m) for m in ConvNeXt(arch='atto').modules()} - {
        nn.Conv2d, nn.Linear, nn.LayerNorm, nn.GELU, nn.Identity, nn.Sequential, nn.ModuleList}
    assert not any(type(m) in ours_types for m in model.modules())
    for i, depth in enumerate((2, 2, 6, 2)):
        assert len(model.stages[i]) == depth
        assert all(type(block) is OfficialBlock for block in model.stages[i])
        assert all(type(block.dwconv) is nn.Conv2d for block in model.stages[i])
    assert type(model.downsample_layers[0][1]) is OfficialLayerNorm
    assert all(type(model.downsample_layers[i][0]) is OfficialLayerNorm for i in (1, 2, 3))
    assert [name for name, _ in model.named_children() if name.startswith('norm')] == [
        'norm1', 'norm3']
    outs = model(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(1, 80, 8, 8), (1, 320, 2, 2)]


def test_official_layer_norm_is_a_layer_norm_over_channels():
    norm = randomize_(OfficialLayerNorm(8))
    x = torch.randn(2, 8, 5, 7) * 3 + 1
    expected = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (8,), norm.weight, norm.bias,
                                        1e-6).permute(0, 3, 1, 2)
    assert relative_error(norm(x), expected) < 1e-6


@pytest.mark.parametrize('grad', [False, True])
def test_official_baseline_never_produces_a_channels_last_tensor(grad):
    variant = Variant('official')
    model = build_backbone(variant, 'atto')
    x = make_input(2, (64, 96), variant, torch.device('cpu'))
    # every module on NCHW maps: inputs and outputs plain contiguous NCHW. (Inside a block,
    # as released, the MLP runs on an NHWC permute and its result is permuted back as a view
    # into the residual sum: only the sum, the block's output, is checked there.)
    nchw_modules = {'model': model}
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            continue
        if name.startswith(('downsample_layers', 'norm')) or name.endswith('dwconv') or (
                name.startswith('stages') and name.count('.') <= 2):
            nchw_modules[name] = module
    # the model, 4 downsampling layers of 2 modules, 4 norms, 4 stages of 12 blocks in all,
    # the blocks' depthwise convolutions
    assert len(nchw_modules) == 1 + 4 * 3 + 4 + (4 + 12) + 12
    seen: list[tuple[str, str, torch.Tensor]] = []

    def record(name: str):
        def hook(module, args, output):
            seen.append((name, 'input', args[0]))
            for out in output if isinstance(output, tuple) else (output,):
                seen.append((name, 'output', out))
        return hook

    for name, module in nchw_modules.items():
        module.register_forward_hook(record(name))
    with torch.set_grad_enabled(grad):
        outs = model(x)
    assert len(outs) == 4
    assert len(seen) == 2 * len(nchw_modules) + 3  # the model returns 4 maps
    for name, what, tensor in seen:
        assert tensor.dim() == 4
        assert tensor.is_contiguous(), (name, what, tensor.stride())
        if tensor.shape[1] > 1 and tensor.shape[2:].numel() > 1:
            assert not tensor.is_contiguous(memory_format=torch.channels_last), (name, what)


def test_official_baseline_runs_as_released_without_options():
    with pytest.raises(ValueError, match='without options'):
        build_backbone(Variant('official', ('channels_last',)), 'atto')
    with pytest.raises(ValueError, match='options must be among'):
        build_backbone(Variant('ours', ('fast',)), 'atto')


def test_official_baseline_drop_path_and_layer_scale_as_released():
    model = OfficialConvNeXt('atto', drop_path_rate=0.3, layer_scale_init_value=0.5)
    blocks = [block for stage in model.stages for block in stage]
    assert isinstance(blocks[0].drop_path, nn.Identity)  # rate 0 for the first block
    assert blocks[-1].drop_path.drop_prob == pytest.approx(0.3)
    assert torch.equal(blocks[3].gamma, torch.full((80,), 0.5))
    assert OfficialConvNeXt('atto', layer_scale_init_value=0).stages[0][0].gamma is None


def test_mmpretrain_not_installed(mmpretrain_missing):
    status = mmpretrain_status()
    assert (status.installed, status.usable, status.import_error) == (False, False, None)
    assert status.describe() == 'mmpretrain: not installed'


def test_mmpretrain_installed_but_broken(broken_mmpretrain):
    # what mmpretrain 1.2.0 does when transformers 5 is importable (the overlay, which would
    # be tried next, is tested in a subprocess: tests/benchmark/test_mmpretrain_env.py)
    broken_mmpretrain("raise TypeError('unsupported operand in a dependency')")
    status = mmpretrain_status(use_overlay=False)
    assert (status.installed, status.usable) == (True, False)
    assert status.import_error == 'TypeError: unsupported operand in a dependency'
    assert status.describe() == ('mmpretrain is installed but fails to import: '
                                 'TypeError: unsupported operand in a dependency')


def test_mmpretrain_with_a_missing_dependency_is_broken_not_missing(broken_mmpretrain):
    broken_mmpretrain('import a_dependency_that_is_not_there_42')
    status = mmpretrain_status(use_overlay=False)
    assert status.installed and not status.usable
    assert status.import_error == ("ModuleNotFoundError: No module named "
                                   "'a_dependency_that_is_not_there_42'")
