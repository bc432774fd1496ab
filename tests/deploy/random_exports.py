"""A random-weight model of a config, saved and exported: what the deploy tests compare."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import load_config
from convnext_dense.deploy.export import export_onnx


def export_random_model(config: Path, folder: Path, name: str,
                        init: Callable[[nn.Module], None] | None = None,
                        shape: tuple[int, int] = (96, 128)) -> tuple[nn.Module, Path]:
    """The config's model (seed 0, eval mode, ``init`` applied), saved as ``folder/name.pth``
    and exported to ``folder/onnx`` at ``shape``: (the model, its ``end2end.onnx``)."""
    torch.manual_seed(0)
    model = build_model(load_config(str(config))).eval()
    if init is not None:
        init(model)
    checkpoint = folder / f'{name}.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    return model, export_onnx(str(config), str(checkpoint), folder / 'onnx', shape=shape)
