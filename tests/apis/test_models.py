"""build_random_model: seeded, initialised, no weight left to uninitialised memory."""
from __future__ import annotations

import copy

import torch

from convnext_dense.apis.models import build_model, build_random_model
from convnext_dense.apis.runner import load_config
from tests.conftest import REPO, nan_for_uninitialised_memory, non_finite_entries

#: the shipped DINO config with an atto backbone and one encoder and decoder layer (build time)
DINO = load_config(str(REPO / 'configs/dino_4scale_convnext_t_coco.py'), {
    'model.backbone.arch': 'atto', 'model.neck.in_channels': [80, 160, 320],
    'model.encoder.num_layers': 1, 'model.decoder.num_layers': 1})


def test_dino_as_built_has_weights_that_only_init_weights_fills():
    """Why build_random_model initialises: mmdet's DINO creates ``level_embed`` with
    ``torch.Tensor(...)``, so as built it is uninitialised memory (NaN here, by design).
    Building leaves the config as it was (mmdet's DINO writes into its head's config)."""
    before = copy.deepcopy(DINO.model)
    with nan_for_uninitialised_memory():
        assert non_finite_entries(build_model(DINO)) == ['level_embed']
    assert DINO.model == before


def test_random_dino_has_every_weight_initialised_and_the_seed_decides_them():
    """No NaN where uninitialised memory is NaN (and the backbone's pretrained ``init_cfg``,
    left in the config, is not loaded); the same seed gives the same weights, another seed
    others, whatever ran before."""
    assert DINO.model.backbone.init_cfg.type == 'Pretrained'
    with nan_for_uninitialised_memory():
        model = build_random_model(DINO, seed=1)
    assert not non_finite_entries(model) and not model.training
    torch.randn(100)  # the global generator moves on
    again = build_random_model(DINO, seed=1).state_dict()
    other = build_random_model(DINO, seed=2).state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, again[name]), name
    assert not torch.equal(model.state_dict()['level_embed'], other['level_embed'])
    assert not torch.equal(model.state_dict()['backbone.downsample_layers.0.0.weight'],
                           other['backbone.downsample_layers.0.0.weight'])
