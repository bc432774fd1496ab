"""The ConvNeXt backbone: shapes, options, freezing, checkpointing, errors."""
from __future__ import annotations

import pytest
import torch

from convnext_dense import ARCH_SETTINGS, ConvNeXt
from convnext_dense.arch import STAGE_STRIDES
from tests.conftest import randomize_, relative_error

INPUT_SIZES = [(32, 32), (65, 47), (224, 160)]


# huge (V2-H, 650M parameters) is checked on the meta device in tests/test_arch.py
@pytest.mark.parametrize('arch', [arch for arch in ARCH_SETTINGS if arch != 'huge'])
def test_shapes_and_strides_for_every_arch(arch):
    model = ConvNeXt(arch=arch).eval()
    dims = ARCH_SETTINGS[arch]['dims']
    assert model.out_channels == dims
    assert model.out_strides == STAGE_STRIDES
    for height, width in INPUT_SIZES:
        with torch.no_grad():
            outs = model(torch.randn(1, 3, height, width))
        expected_h, expected_w = height // 4, width // 4
        for i, out in enumerate(outs):
            assert out.shape == (1, dims[i], expected_h, expected_w), (arch, height, width, i)
            expected_h, expected_w = expected_h // 2, expected_w // 2
            assert torch.isfinite(out).all()


def test_parameter_names_follow_the_official_release():
    names = set(dict(ConvNeXt(arch='atto', use_grn=False).named_parameters()))
    for expected in ['downsample_layers.0.0.weight', 'downsample_layers.0.1.weight',
                     'downsample_layers.3.0.bias', 'downsample_layers.3.1.weight',
                     'stages.2.5.dwconv.weight', 'stages.2.5.norm.weight',
                     'stages.2.5.pwconv1.weight', 'stages.2.5.pwconv2.bias', 'stages.2.5.gamma',
                     'norm0.weight', 'norm3.bias']:
        assert expected in names
    grn = dict(ConvNeXt(arch='atto', use_grn=True, layer_scale_init_value=0).named_parameters())
    assert grn['stages.0.0.grn.gamma'].shape == (1, 1, 1, 160)
    assert 'stages.0.0.gamma' not in grn


def test_parameter_counts_match_the_paper_backbones():
    # ImageNet-1K classifiers in the paper: T 28M, S 50M, B 89M, L 198M, XL 350M;
    # they add a 1000-way head and a final norm, and lack the four output norms.
    def backbone_params(arch):
        return sum(p.numel() for p in ConvNeXt(arch=arch).parameters())
    for arch, classifier_params in [('tiny', 28.6e6), ('small', 50.2e6), ('base', 88.6e6)]:
        dims = ARCH_SETTINGS[arch]['dims']
        head = dims[-1] * 1000 + 1000 + 2 * dims[-1]
        out_norms = 2 * sum(dims)
        classifier = backbone_params(arch) - out_norms + head
        assert classifier == pytest.approx(classifier_params, rel=0.01)


def test_explicit_depths_and_dims():
    model = ConvNeXt(depths=(1, 1, 2, 1), dims=(8, 16, 24, 32), out_indices=(1, 3)).eval()
    assert len(model.stages[2]) == 2
    outs = model(torch.randn(2, 3, 64, 64))
    assert [o.shape for o in outs] == [(2, 16, 8, 8), (2, 32, 2, 2)]


@pytest.mark.parametrize('out_indices', [(0,), (3,), (1, 2), (3, 1), (2, 0, 3), [0, 1, 2, 3]])
def test_out_indices_subsets_keep_order(out_indices):
    model = ConvNeXt(arch='atto', out_indices=out_indices).eval()
    full = ConvNeXt(arch='atto').eval()
    full.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs, full_outs = model(x), full(x)
    assert len(outs) == len(out_indices)
    assert model.out_channels == tuple(ARCH_SETTINGS['atto']['dims'][i] for i in out_indices)
    for out, i in zip(outs, out_indices):
        torch.testing.assert_close(out, full_outs[i])
    # Only the requested stages get an output norm.
    norms = {n.split('.')[0] for n, _ in model.named_parameters() if n.startswith('norm')}
    assert norms == {f'norm{i}' for i in out_indices}


def full_and_truncated(out_indices, seed=0, **kwargs):
    """A randomised full atto backbone and one with ``out_indices`` holding the same weights."""
    full = randomize_(ConvNeXt(arch='atto', layer_scale_init_value=1.0, **kwargs), seed=seed)
    model = ConvNeXt(arch='atto', layer_scale_init_value=1.0, out_indices=out_indices, **kwargs)
    full_state = full.state_dict()
    model.load_state_dict({k: full_state[k] for k in model.state_dict()})
    return full, model


@pytest.mark.parametrize('out_indices, num_built', [
    ((0, 1, 2), 3), ((0,), 1), ((1,), 2), ((2, 0), 3), ((1, 3), 4), ((0, 1, 2, 3), 4)])
def test_stages_after_the_last_output_are_not_built(out_indices, num_built):
    full, model = full_and_truncated(out_indices)
    assert model.num_built_stages == num_built
    assert len(model.downsample_layers) == len(model.stages) == num_built
    # depths/dims describe the arch, not what is built
    assert model.depths == ARCH_SETTINGS['atto']['depths']
    assert model.dims == ARCH_SETTINGS['atto']['dims']
    stages = {int(n.split('.')[1]) for n, _ in model.named_parameters()
              if n.startswith(('stages.', 'downsample_layers.'))}
    assert stages == set(range(num_built))
    unbuilt = sum(p.numel() for n, p in full.named_parameters()
                  if n.startswith(tuple(f'{m}.{i}.' for m in ('stages', 'downsample_layers')
                                        for i in range(num_built, 4))
                                  + tuple(f'norm{i}.' for i in range(4) if i not in out_indices)))
    assert sum(p.numel() for p in model.parameters()) == \
        sum(p.numel() for p in full.parameters()) - unbuilt
    # same weights, same features as the full backbone's
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        outs, full_outs = model.eval()(x), full.eval()(x)
    assert len(outs) == len(out_indices)
    for out, i in zip(outs, out_indices):
        torch.testing.assert_close(out, full_outs[i], rtol=0, atol=0)


@pytest.mark.parametrize('with_cp', [False, True])
def test_every_parameter_gets_a_gradient_with_fewer_stages(with_cp):
    """out_indices=(0, 1, 2): no parameter without a gradient (DDP's unused parameters)."""
    full, model = full_and_truncated((0, 1, 2), drop_path_rate=0.2, with_cp=with_cp)
    assert not hasattr(model, 'norm3')
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for net in (model.train(), full.train()):
        torch.manual_seed(7)  # the same drop-path draws: stages 0..2 come first
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum()
            for o in net(x)[:3]).backward()
        grads.append({n: p.grad for n, p in net.named_parameters()})
    ours, reference = grads
    no_grad = [n for n, g in ours.items() if g is None]  # (zero where drop path drops all)
    assert not no_grad, no_grad
    # the old behaviour: the full backbone's stage 3 runs but gets no gradient
    assert reference['stages.3.0.dwconv.weight'] is None
    assert reference['downsample_layers.3.1.weight'] is None
    for name, grad in ours.items():
        torch.testing.assert_close(grad, reference[name], msg=name)


class FirstThreeOfFour(torch.nn.Module):
    """The old behaviour of out_indices=(0, 1, 2): stage 3 runs, its output is thrown away."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = ConvNeXt(arch='atto')

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.backbone(x)[:3]


def test_ddp_without_find_unused_parameters(tmp_path):
    """DDP (1 gloo process) trains out_indices=(0, 1, 2) without find_unused_parameters.

    The control shows what it catches: with a stage that runs but gets no gradient, the
    2nd iteration fails. tests/test_dist_train.py trains a detector on 2 processes.
    """
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    if dist.is_initialized():
        pytest.skip('a process group already exists')
    dist.init_process_group('gloo', init_method=f'file://{tmp_path / "store"}', rank=0,
                            world_size=1)
    try:
        def two_steps(module):
            ddp = DistributedDataParallel(module, find_unused_parameters=False)
            for _ in range(2):
                sum(o.sum() for o in ddp(torch.randn(2, 3, 64, 64))).backward()
        two_steps(ConvNeXt(arch='atto', out_indices=(0, 1, 2)))
        with pytest.raises(RuntimeError, match='Expected to have finished reduction'):
            two_steps(FirstThreeOfFour())
    finally:
        dist.destroy_process_group()


def test_official_initialisation():
    """Without pretrained weights: the release's init (convolutions and linears: truncated
    normal, std 0.02, zero bias; LayerNorms: ones and zeros; layer scale: its init value)."""
    torch.manual_seed(0)
    model = ConvNeXt(arch='atto', layer_scale_init_value=1e-6)
    for name, param in model.named_parameters():
        if name.endswith('gamma'):
            assert torch.all(param == 1e-6), name
        elif name.endswith('bias'):
            assert torch.all(param == 0), name
        elif param.dim() == 1:  # LayerNorm weights
            assert torch.all(param == 1), name
        else:
            assert abs(param.std().item() - 0.02) < 0.003 and abs(param.mean().item()) < 0.002, (
                name, param.std().item())


def test_drop_path_rates_do_not_depend_on_out_indices():
    full, model = full_and_truncated((0, 1), drop_path_rate=0.4)

    def rates(net):
        return [getattr(b.drop_path, 'drop_prob', 0.0) for stage in net.stages for b in stage]
    assert rates(model) == rates(full)[:len(rates(model))] == rates(full)[:4]
    assert rates(full)[-1] == pytest.approx(0.4)


def test_fewer_stages_need_smaller_inputs():
    model = ConvNeXt(arch='atto', out_indices=(0, 1)).eval()
    assert model.min_input_size == 8
    with torch.no_grad():
        assert [o.shape for o in model(torch.randn(1, 3, 8, 12))] == [(1, 40, 2, 3),
                                                                     (1, 80, 1, 1)]
    with pytest.raises(ValueError, match=r'at least 8x8 .*out_indices=\(0, 1\)\), got 7x12'):
        model(torch.randn(1, 3, 7, 12))


@pytest.mark.parametrize('frozen_stages', [3, 4])
def test_frozen_stages_beyond_the_built_ones_freeze_all_built(frozen_stages):
    """Unbuilt stages are never trained: freezing them is a no-op, not an error."""
    model = ConvNeXt(arch='atto', out_indices=(0, 1, 2), frozen_stages=frozen_stages).train()
    assert model.frozen_stages == frozen_stages
    for module in (*model.downsample_layers, *model.stages):
        assert not module.training and not any(p.requires_grad for p in module.parameters())
    norms = [n for n, p in model.named_parameters() if p.requires_grad]
    assert norms == [f'norm{i}.{p}' for i in range(3) for p in ('weight', 'bias')]
    model = ConvNeXt(arch='atto', out_indices=(0,), frozen_stages=2).train()
    assert not any(p.requires_grad for p in model.stages.parameters())


@pytest.mark.parametrize('frozen_stages', [1, 2, 4])
def test_frozen_stages_stay_frozen_after_train(frozen_stages):
    model = ConvNeXt(arch='atto', frozen_stages=frozen_stages, drop_path_rate=0.2)
    model.train()
    for i in range(4):
        frozen = i < frozen_stages
        for module in (model.downsample_layers[i], model.stages[i]):
            assert all(not m.training for m in module.modules()) == frozen
            assert all(p.requires_grad != frozen for p in module.parameters())
        # output norms are learnt for the dense task and never frozen
        assert all(p.requires_grad for p in getattr(model, f'norm{i}').parameters())
    assert model.train() is model
    sum(o.sum() for o in model(torch.randn(1, 3, 64, 64))).backward()
    for i in range(frozen_stages):
        assert all(p.grad is None for p in model.stages[i].parameters())
        assert all(p.grad is None for p in model.downsample_layers[i].parameters())
    if frozen_stages < 4:
        assert model.stages[frozen_stages][0].dwconv.weight.grad is not None


@pytest.mark.parametrize('frozen_stages', [-1, 0])
def test_frozen_stages_none(frozen_stages):
    model = ConvNeXt(arch='atto', frozen_stages=frozen_stages).train()
    assert all(p.requires_grad for p in model.parameters())


def test_frozen_stages_are_deterministic_in_train_mode():
    model = ConvNeXt(arch='atto', frozen_stages=4, drop_path_rate=0.5, out_indices=(3,))
    model.train()
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(model(x)[0], model(x)[0])


def test_with_cp_gives_identical_outputs_and_gradients():
    torch.manual_seed(0)
    plain = ConvNeXt(arch='atto', drop_path_rate=0.3, layer_scale_init_value=1.0).train()
    checkpointed = ConvNeXt(arch='atto', drop_path_rate=0.3, layer_scale_init_value=1.0,
                            with_cp=True).train()
    checkpointed.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 64, 64)
    results = []
    for model in (plain, checkpointed):
        torch.manual_seed(123)
        outs = model(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (outs_a, grads_a), (outs_b, grads_b) = results
    for a, b in zip(outs_a, outs_b):
        torch.testing.assert_close(a, b)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], msg=name)


@pytest.mark.parametrize('with_cp', [False, True])
def test_with_cp_recomputes_each_block_in_the_backward(with_cp):
    """Checkpointing really happens: each block runs again during the backward (and only
    then), so its activations were not kept; without with_cp, or without gradients, once."""
    model = ConvNeXt(arch='atto', out_indices=(0, 1), with_cp=with_cp).train()
    calls = []
    for name, block in model.stages.named_children():
        for index, module in block.named_children():
            def counted(x, key=f'{name}.{index}', forward=module.forward):
                calls.append(key)
                return forward(x)
            module.forward = counted  # (forward hooks do not see checkpoint's recomputation)
    blocks = [f'{i}.{j}' for i in range(2) for j in range(model.depths[i])]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    assert calls == blocks
    calls.clear()
    sum(o.sum() for o in model(torch.randn(1, 3, 32, 32))).backward()
    assert sorted(calls) == sorted(blocks * (2 if with_cp else 1))


def test_memory_formats_and_inference_path_give_the_same_results():
    """channels_last inputs, and the fused no-grad path, match the autograd path (fp32)."""
    torch.manual_seed(0)
    model = randomize_(ConvNeXt(arch='atto', layer_scale_init_value=1.0)).eval()
    x = torch.randn(2, 3, 96, 64)
    results = []
    for memory_format in (torch.contiguous_format, torch.channels_last):
        inp = x.detach().contiguous(memory_format=memory_format).requires_grad_()
        outs = model(inp)
        assert all(o.is_contiguous() for o in outs)  # plain NCHW out, whatever came in
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        results.append((outs, inp.grad, [p.grad.clone() for p in model.parameters()]))
        model.zero_grad()
    (outs_a, x_grad_a, grads_a), (outs_b, x_grad_b, grads_b) = results
    with torch.no_grad():
        outs_c = model(x)
    for a, b, c in zip(outs_a, outs_b, outs_c):
        assert relative_error(b, a) < 1e-5 and relative_error(c, a) < 1e-5
    assert relative_error(x_grad_b, x_grad_a) < 1e-5
    for a, b in zip(grads_a, grads_b):
        assert relative_error(b, a) < 1e-5


@pytest.mark.slow
def test_torch_compile_traces_one_graph_with_the_same_outputs_and_gradients():
    """Dynamo traces the backbone whole (``fullgraph``: a graph break fails). Training runs
    through AOT autograd (the decompositions and functionalisation inductor runs too, without
    its C++ code generation: about 40 s of compiling on a fresh machine), inference through
    inductor itself; both give eager's outputs (and gradients)."""
    torch.manual_seed(0)
    # one block per stage holds every layer the compiler meets (stem, blocks, downsampling,
    # output norms); more blocks only lengthen the compile
    model = randomize_(ConvNeXt(depths=(1, 1, 1, 1), dims=(16, 32, 64, 128),
                                layer_scale_init_value=1.0))
    x = torch.randn(2, 3, 64, 64)
    grads = []
    for runner in (model, torch.compile(model, backend='aot_eager', fullgraph=True)):
        model.zero_grad()
        outs = runner(x)
        sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
        grads.append((outs, [p.grad.clone() for p in model.parameters()]))
    for a, b in zip(grads[0][0], grads[1][0]):
        assert relative_error(b, a) < 1e-5
    for a, b in zip(grads[0][1], grads[1][1]):
        assert relative_error(b, a) < 1e-4
    model.eval()
    with torch.no_grad():
        for a, b in zip(model(x), torch.compile(model, fullgraph=True)(x)):
            assert relative_error(b, a) < 1e-5


def test_drop_path_active_in_train_and_off_in_eval():
    model = ConvNeXt(arch='atto', drop_path_rate=0.5, layer_scale_init_value=1.0)
    reference = ConvNeXt(arch='atto', drop_path_rate=0.0, layer_scale_init_value=1.0)
    reference.load_state_dict(model.state_dict())
    rates = [block.drop_path.drop_prob for stage in model.stages for block in stage
             if hasattr(block.drop_path, 'drop_prob')]
    assert rates[-1] == pytest.approx(0.5) and rates == sorted(rates)
    assert isinstance(model.stages[0][0].drop_path, torch.nn.Identity)  # rate 0: no op
    x = torch.randn(4, 3, 64, 64)
    model.eval(), reference.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[-1], reference(x)[-1])
        model.train()
        torch.manual_seed(0)
        first = model(x)[-1]
        torch.manual_seed(1)
        second = model(x)[-1]
    assert relative_error(first, second) > 1e-3


def test_grn_variant_changes_the_block():
    torch.manual_seed(0)
    v2 = randomize_(ConvNeXt(arch='atto', use_grn=True, layer_scale_init_value=0)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        base = v2(x)[-1]
        for stage in v2.stages:
            for block in stage:
                block.grn.gamma.zero_()
                block.grn.beta.zero_()
        # with zero gamma/beta GRN is the identity: the output must change
        assert relative_error(v2(x)[-1], base) > 1e-3


@pytest.mark.parametrize('kwargs, message', [
    (dict(arch='gigantic'), "arch must be one of"),
    (dict(output_stride=4), 'output_stride must be one of 32, 16, 8, got 4'),
    (dict(output_stride=True), 'output_stride must be one of 32, 16, 8, got True'),
    (dict(arch='tiny', depths=(1, 1, 1, 1), dims=(8, 8, 8, 8)), 'either arch or depths'),
    (dict(depths=(1, 1, 1)), 'depths and dims must be given together'),
    (dict(depths=(1, 1, 1), dims=(8, 8, 8)), 'depths must be 4 positive integers'),
    (dict(depths=(1, 1, 1, 1), dims=(8, 0, 8, 8)), 'dims must be 4 positive integers'),
    (dict(out_indices=(4,)), r'out_indices must be a subset of 0..3, got \(4,\)'),
    (dict(out_indices=(-1,)), 'out_indices must be a subset of 0..3'),
    (dict(out_indices=(1, 1)), 'must not repeat'),
    (dict(out_indices=()), 'non-empty'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate must be in \[0, 1\)'),
    (dict(drop_path_rate=1.0), r'drop_path_rate must be in \[0, 1\)'),
    (dict(frozen_stages=5), 'frozen_stages must be an integer in -1..4'),
    (dict(frozen_stages=-2), 'frozen_stages must be an integer in -1..4'),
    (dict(layer_scale_init_value=-1), 'layer_scale_init_value must be >= 0'),
    (dict(in_channels=0), 'in_channels must be a positive integer'),
])
def test_invalid_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvNeXt(**kwargs)


def test_invalid_inputs_are_rejected():
    model = ConvNeXt(arch='atto').eval()
    with pytest.raises(ValueError, match='at least 32x32.*got 31x64'):
        model(torch.randn(1, 3, 31, 64))
    with pytest.raises(ValueError, match='in_channels=3.*4 channels'):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match='NCHW'):
        model(torch.randn(3, 64, 64))


def test_in_channels():
    model = ConvNeXt(arch='atto', in_channels=1).eval()
    assert model(torch.randn(1, 1, 32, 32))[0].shape == (1, 40, 8, 8)


def test_typo_in_argument_names_names_the_closest_valid_one():
    with pytest.raises(TypeError, match=r"'drop_path' \(did you mean 'drop_path_rate'\?\)"):
        ConvNeXt(arch='atto', drop_path=0.1)
    with pytest.raises(TypeError, match=r"'out_indexes' \(did you mean 'out_indices'\?\).*"
                                        r"'zzz'; valid arguments: arch, depths"):
        ConvNeXt(out_indexes=(0,), zzz=1)


def test_typo_through_the_mmdet_registry():
    from mmdet.registry import MODELS
    with pytest.raises(TypeError, match="did you mean 'frozen_stages'"):
        MODELS.build(dict(type='ConvNeXt', arch='atto', frozen_stage=1))


# --- dilated backbones (output_stride 16 and 8) ------------------------------------------


@pytest.mark.parametrize('output_stride, strides, dilations', [
    (16, (4, 8, 16, 16), (1, 1, 1, 2)),
    (8, (4, 8, 8, 8), (1, 1, 2, 4)),
])
def test_dilated_backbone_keeps_keys_and_the_undilated_stages(output_stride, strides, dilations):
    reference = randomize_(ConvNeXt(arch='atto'), seed=1).eval()
    dilated = ConvNeXt(arch='atto', output_stride=output_stride).eval()
    # every checkpoint of the paper's backbone loads unchanged: same keys, same shapes
    assert {k: v.shape for k, v in dilated.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    dilated.load_state_dict(reference.state_dict())
    assert dilated.out_strides == strides and dilated.dilations == dilations
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected, actual = reference(x), dilated(x)
    first_dilated = dilations.index(2)
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == (2, ARCH_SETTINGS['atto']['dims'][i], 64 // strides[i], 96 // strides[i])
        if i < first_dilated:  # the stages before the first dilated one: exactly as before
            assert torch.equal(a, e), i
        else:  # compared with the undilated stage in the test below
            assert torch.isfinite(a).all()


@pytest.mark.parametrize('output_stride', [16, 8])
def test_every_dilated_stage_matches_the_undilated_one_on_its_grid(output_stride):
    """Each dilated stage (16: stage 3, dilation 2; 8: stage 2, dilation 2, and stage 3,
    dilation 4), sampled on the grid of the undilated stage's stride, equals the undilated
    stage everywhere, borders included, for inputs that are multiples of 32: a dilated 7x7
    depthwise convolution reads exactly the grid positions the undilated one reads, and where
    the undilated one reads zero padding so does the dilated one; the 2x2 downsampling
    convolutions at stride 1 with the previous dilation read the grid positions the stride-2
    ones read. A wrong dilation in any dilated stage (its blocks or its downsampling) moves
    the taps off the grid."""
    reference = randomize_(ConvNeXt(arch='atto'), seed=3).eval()
    dilated = ConvNeXt(arch='atto', output_stride=output_stride).eval()
    dilated.load_state_dict(reference.state_dict())
    x = torch.randn(1, 3, 32 * 8, 32 * 6)
    with torch.no_grad():
        expected, actual = reference(x), dilated(x)
    dilated_stages = [i for i, d in enumerate(dilated.dilations) if d > 1]
    assert dilated_stages == ([3] if output_stride == 16 else [2, 3])
    for i in dilated_stages:
        step = STAGE_STRIDES[i] // output_stride
        assert actual[i].shape[-2:] == (256 // output_stride, 192 // output_stride)
        torch.testing.assert_close(actual[i][..., ::step, ::step], expected[i],
                                   rtol=1e-4, atol=1e-4, msg=lambda m, i=i: f'stage {i}: {m}')


@pytest.mark.parametrize('out_indices, output_stride, dilations', [
    ((0, 1, 2, 3), 8, (1, 1, 2, 4)),
    ((0, 1, 2), 8, (1, 1, 2)),
    ((1, 3), 16, (1, 1, 1, 2)),
])
def test_dilations_are_those_the_built_blocks_use(out_indices, output_stride, dilations):
    model = ConvNeXt(arch='atto', out_indices=out_indices, output_stride=output_stride)
    assert model.dilations == dilations  # one per built stage
    used = tuple({block.dwconv.dilation for block in stage} for stage in model.stages)
    assert used == tuple({(d, d)} for d in dilations)


def test_dilated_backbone_trains_with_fewer_stages_and_checkpointing():
    model = ConvNeXt(arch='atto', out_indices=(0, 2), output_stride=8, with_cp=True)
    assert model.out_strides == (4, 8) and model.num_built_stages == 3
    outs = model(torch.randn(2, 3, 64, 64))
    sum(o.float().mean() for o in outs).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
