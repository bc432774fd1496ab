"""Build a config's model and load trained weights into it, with key-level errors."""
from __future__ import annotations

import os

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import nn

from ..checkpoint.io import CheckpointError, read_checkpoint
from ..checkpoint.safe_loading import mmengine_safe_globals
from ..utils import first_n_and_more
from .runner import toolbox_of


def build_model(cfg: Config) -> nn.Module:
    """The config's detector or segmentor, from its toolbox's registry, in eval mode.

    The backbone's ``init_cfg`` (ImageNet weights) is not applied: trained weights follow.
    """
    import importlib
    toolbox = toolbox_of(cfg)
    importlib.import_module(f'{toolbox}.models')  # registers the toolbox's models
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    with DefaultScope.overwrite_default_scope(toolbox):
        model = registry.build(cfg.model)
    return model.eval()


def load_trained_weights(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load an mmengine checkpoint (or a bare state dict) into ``model``, all keys exactly.

    Raises:
        CheckpointError: the file cannot be read, or its weights do not fit the model: the
            message names the first missing, unexpected and wrongly shaped keys.
    """
    with torch.serialization.safe_globals(mmengine_safe_globals()):
        loaded = read_checkpoint(checkpoint)
    state = loaded.get('state_dict', loaded)
    state = {k.removeprefix('module.'): v for k, v in state.items()}
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f'{k} {tuple(state[k].shape)} (model: {tuple(v.shape)})'
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        problems = []
        if missing:
            problems.append(f'missing {len(missing)}: {first_n_and_more(missing)}')
        if unexpected:
            problems.append(f'unexpected {len(unexpected)}: {first_n_and_more(unexpected)}')
        if shapes:
            problems.append(f'wrong shape {len(shapes)}: {first_n_and_more(shapes)}')
        raise CheckpointError(f'{checkpoint}: the checkpoint does not fit the config\'s model '
                              f'({type(model).__name__}); ' + '; '.join(problems))
    model.load_state_dict(state)
