"""Build a config's model (as built, or seeded and initialised) and load trained weights into
it, with key-level errors."""
from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator, Mapping

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import nn

from ..checkpoint.errors import CheckpointError
from ..checkpoint.model_fit import describe_misfit, read_model_weights
from .toolbox import toolbox_of


def build_toolbox_model(toolbox: str, model_cfg: Mapping) -> nn.Module:
    """A model config built by ``toolbox``'s (``'mmdet'``/``'mmseg'``) registry, in its
    scope; weights as the modules initialise them (no ``init_weights``). ``model_cfg`` is
    left as it was (mmdet's DETR detectors write into the head's config as they build)."""
    import importlib
    importlib.import_module(f'{toolbox}.models')  # registers the toolbox's models
    registry = importlib.import_module(f'{toolbox}.registry').MODELS
    with DefaultScope.overwrite_default_scope(toolbox):
        return registry.build(copy.deepcopy(model_cfg))


def build_model(cfg: Config) -> nn.Module:
    """The config's detector or segmentor, from its toolbox's registry, in eval mode.

    The backbone's ``init_cfg`` (ImageNet weights) is not applied: trained weights follow.
    """
    return build_toolbox_model(toolbox_of(cfg), cfg.model).eval()


def build_random_model(cfg: Config, seed: int = 0) -> nn.Module:
    """The config's model with seeded random weights, as training starts it, in eval mode.

    Built and initialised (``init_weights()``) after ``torch.manual_seed(seed)``: the same
    seed gives the same weights, and no weight is left to uninitialised memory. (A model as
    built can hold such weights: mmdet's DETR-style detectors create some parameters with
    ``torch.Tensor(...)`` and fill them only in ``init_weights``, DINO's ``level_embed``, so
    they are whatever the allocator returns, NaN at times.) The backbone's ``init_cfg``
    (pretrained weights) is not applied: the weights are random by intent. For benchmarks
    and tests; trained models load their weights (:func:`load_trained_weights`).
    """
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.pop('init_cfg', None)
    torch.manual_seed(seed)
    model = build_toolbox_model(toolbox_of(cfg), model_cfg)
    initialise_weights(model)
    return model.eval()


def initialise_weights(model: nn.Module) -> None:
    """``model.init_weights()`` as training starts it (mmdet's DETR-style detectors fill some
    parameters only there), without its log line per parameter."""
    with _quiet_mmengine_logger():
        model.init_weights()


@contextlib.contextmanager
def _quiet_mmengine_logger() -> Iterator[None]:
    """mmengine's current logger at WARNING meanwhile."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_trained_weights(model: nn.Module, checkpoint: str | os.PathLike) -> None:
    """Load an mmengine checkpoint (or a bare state dict) into ``model``, all keys exactly.

    Raises:
        CheckpointError: the file cannot be read, or its weights do not fit the model: the
            message says what differs (number of classes, head type, backbone arch, an
            unconverted mmdet 3.x / mmseg 1.x ConvNeXt checkpoint) and names the first
            missing, unexpected and wrongly shaped keys.
    """
    state = read_model_weights(checkpoint)
    problem = describe_misfit(state, model, str(checkpoint), "the config's model")
    if problem:
        raise CheckpointError(problem)
    model.load_state_dict(state)
