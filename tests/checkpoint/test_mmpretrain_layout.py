"""mmpretrain checkpoints against mmpretrain's real ConvNeXt (not a hand-written inverse).

mmpretrain 1.2.0 cannot live in the project's environment (it fails to import next to
transformers 5, and mmdet imports it whenever it is installed), so ``make setup``
installs it into an overlay folder, ``<venv>/overlays/mmpretrain``. A subprocess with
that folder on ``sys.path`` and ``transformers`` hidden (:mod:`tests.checkpoint.
mmpretrain_overlay`) builds mmpretrain's models with random weights and writes their
state dicts, an input and mmpretrain's backbone features (``out_indices=(0, 1, 2, 3)``,
``gap_before_final_norm=False``).
This process, which cannot import mmpretrain, converts the state dicts with
:func:`convert_checkpoint`, loads them into this package's ConvNeXt and compares.
"""
from __future__ import annotations

import importlib.util

import pytest
import torch

from convnext_dense import ConvNeXt
from convnext_dense.checkpoint.convert import convert_checkpoint
from tests.checkpoint.mmpretrain_overlay import OVERLAY, run_with_mmpretrain
from tests.conftest import relative_error

#: Each case: mmpretrain backbone arguments, and whether the model is an ImageNet
#: classifier (ImageClassifier + LinearClsHead, pooled final norm) or a dense model
#: (the per-stage output norms of out_indices 0..3, kept by the conversion).
CASES = {
    'classifier-v1-atto': (dict(arch='atto'), True),
    'classifier-v1-conv-mlp': (dict(arch=dict(depths=[1, 2, 3, 1], channels=[16, 24, 32, 48]),
                                    linear_pw_conv=False), True),
    'classifier-v2-grn': (dict(arch=dict(depths=[1, 2, 3, 1], channels=[16, 24, 32, 48]),
                               use_grn=True, layer_scale_init_value=0.0), True),
    'dense-v1': (dict(arch=dict(depths=[1, 1, 2, 1], channels=[16, 24, 32, 40])), False),
    'dense-v2-grn': (dict(arch=dict(depths=[1, 1, 2, 1], channels=[16, 24, 32, 40]),
                          use_grn=True, layer_scale_init_value=0.0), False),
}

# Runs with mmpretrain importable (run_with_mmpretrain). argv: output file, repr(CASES).
REFERENCE_SCRIPT = r'''
import ast
out, cases = sys.argv[1], ast.literal_eval(sys.argv[2])
from mmpretrain.models import ConvNeXt, ImageClassifier

x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
results = {}
for seed, (name, (kwargs, classifier)) in enumerate(sorted(cases.items())):
    dense_cfg = dict(type='ConvNeXt', out_indices=[0, 1, 2, 3], gap_before_final_norm=False,
                     **kwargs)
    if classifier:  # as mmpretrain's ImageNet configs build it
        arch = kwargs['arch']
        channels = (arch if isinstance(arch, dict) else ConvNeXt.arch_settings[arch])['channels']
        model = ImageClassifier(
            backbone=dict(type='ConvNeXt', **kwargs),
            head=dict(type='LinearClsHead', num_classes=10, in_channels=channels[-1]))
        randomize_(model, seed=seed)
        # mmpretrain's own dense backbone with these ImageNet weights: fresh output norms
        dense = ImageClassifier(backbone=dense_cfg).backbone
        trunk = {k[len('backbone.'):]: v for k, v in model.state_dict().items()
                 if k.startswith('backbone.') and not k.startswith('backbone.norm')}
        missing, unexpected = dense.load_state_dict(trunk, strict=False)
        assert not unexpected and all(k.startswith('norm') for k in missing), missing
    else:
        model = randomize_(ImageClassifier(backbone=dense_cfg), seed=seed)
        dense = model.backbone
    dense.eval()  # mmpretrain's ConvNeXt.train() returns None
    with torch.no_grad():
        features = dense(x)
    assert len(features) == 4 and features[0].dim() == 4, [f.shape for f in features]
    results[name] = dict(checkpoint={'meta': {'mmpretrain_version': mmpretrain.__version__},
                                     'state_dict': model.state_dict()},
                         features=[f.contiguous() for f in features])
torch.save(dict(input=x, results=results), out)
'''


@pytest.fixture(scope='module')
def mmpretrain_reference(tmp_path_factory) -> dict:
    """State dicts and features of mmpretrain's real models (one subprocess for all cases)."""
    out = tmp_path_factory.mktemp('mmpretrain') / 'reference.pth'
    run_with_mmpretrain(REFERENCE_SCRIPT, str(out), repr(CASES))
    return torch.load(out, weights_only=True)


def test_mmpretrain_is_not_importable_from_the_project_environment():
    """mmdet imports mmpretrain if it can; with transformers 5 that import crashes."""
    assert importlib.util.find_spec('mmpretrain') is None, (
        'mmpretrain is installed in the project environment; it belongs only in the '
        f'overlay {OVERLAY}')


@pytest.mark.slow  # the subprocess imports all of mmpretrain: about 30 s
@pytest.mark.parametrize('name', CASES)
def test_real_mmpretrain_weights_give_mmpretrain_features(mmpretrain_reference, name):
    kwargs, classifier = CASES[name]
    reference = mmpretrain_reference['results'][name]
    state_dict = reference['checkpoint']['state_dict']

    conversion = convert_checkpoint(reference['checkpoint'], f'{name}.pth')
    assert conversion.src_format == 'mmpretrain'
    arch = kwargs['arch']
    if isinstance(arch, str):
        assert conversion.arch.name == arch
    else:
        assert (conversion.arch.depths, conversion.arch.dims) == (
            tuple(arch['depths']), tuple(arch['channels']))
    assert conversion.arch.use_grn == kwargs.get('use_grn', False)
    assert conversion.arch.layer_scale == (kwargs.get('layer_scale_init_value', 1e-6) > 0)
    non_backbone = sorted(k for k in state_dict if not k.startswith('backbone.'))
    if classifier:
        # the pooled final norm goes with the head: the dense output norms start fresh
        assert sorted(conversion.dropped) == sorted(
            ['backbone.norm3.weight', 'backbone.norm3.bias', *non_backbone])
        assert not any(k.startswith('norm') for k in conversion.state_dict)
    else:
        assert sorted(conversion.dropped) == non_backbone
        assert {f'norm{i}.weight' for i in range(4)} <= conversion.state_dict.keys()
    # every tensor of mmpretrain's backbone (less the dropped norm) arrives, none invented
    assert conversion.num_params == sum(
        v.numel() for k, v in state_dict.items() if k.startswith('backbone.')
        and k not in conversion.dropped)

    model = ConvNeXt(**conversion.arch.backbone_kwargs(), out_indices=(0, 1, 2, 3))
    result = model.load_state_dict(conversion.state_dict, strict=not classifier)
    if classifier:
        assert sorted(result.missing_keys) == sorted(
            f'norm{i}.{p}' for i in range(4) for p in ('weight', 'bias'))
    with torch.no_grad():
        features = model.eval()(mmpretrain_reference['input'])
    assert len(features) == 4
    for i, (actual, expected) in enumerate(zip(features, reference['features'])):
        assert actual.shape == expected.shape, (i, actual.shape, expected.shape)
        error = relative_error(actual, expected)
        assert error < 1e-5, f'{name}: stage {i} differs from mmpretrain: {error:.2e}'
