"""Whole detector/segmentor checkpoints checked against the model a config builds
(``tools/convert_checkpoint.py --whole --config``).

The conversion itself is :mod:`convnext_dense.checkpoint.whole_model`, which compares with a
built model; building a config's model is this layer's job.
"""
from __future__ import annotations

import os
from functools import partial
from typing import Any

import torch
from mmengine.config import Config
from torch import nn

from ..checkpoint.errors import CheckpointError
from ..checkpoint.whole_model import WholeConversion, check_against_model, convert_whole_and_save
from .models import build_model
from .runner import load_config


def build_target_model(config: str | os.PathLike | Config) -> nn.Module:
    """The config's model, built on the meta device (shapes only) where it can be.

    Raises:
        CheckpointError: the config cannot be read or its model cannot be built.
    """
    try:
        cfg = config if isinstance(config, Config) else load_config(str(config))
        try:
            with torch.device('meta'):
                return build_model(cfg)
        except (NotImplementedError, RuntimeError):  # a module that computes at build time
            return build_model(cfg)
    except Exception as exc:  # any config error: say which config
        raise CheckpointError(
            f'--config {getattr(config, "filename", None) or config}: cannot build its model '
            f'({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ""}); give '
            "a config of this project's model, e.g. configs/mask_rcnn_convnext_t_coco.py"
        ) from exc


def check_against_config(conversion: WholeConversion,
                         config: str | os.PathLike | Config) -> None:
    """Refuse unless every key and shape fits the model that ``config`` builds.

    Raises:
        CheckpointError: names what differs in words (number of classes, head type,
            backbone arch) and the first mismatching keys.
    """
    name = getattr(config, 'filename', None) or str(config)
    check_against_model(conversion, build_target_model(config), name)


def convert_whole_for_config(src: str | os.PathLike, dst: str | os.PathLike,
                             config: str | os.PathLike | Config | None = None,
                             force: bool = False, **kwargs: Any) -> WholeConversion:
    """:func:`~convnext_dense.checkpoint.whole_model.convert_whole_and_save`, refused unless
    the result fits ``config``'s model (when given); ``kwargs``: ``src_format``, ``arch``."""
    check = None if config is None else partial(check_against_config, config=config)
    return convert_whole_and_save(src, dst, check=check, force=force, **kwargs)
