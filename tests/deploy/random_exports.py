"""A random-weight model of a config, saved and exported, and the export next to it on the
config's test dataset: what the deploy tests compare."""
from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from torch import nn

from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import load_config
from convnext_dense.deploy.export import export_onnx
from convnext_dense.deploy.runtime import use_onnx_runtime
from tests.conftest import nan_for_uninitialised_memory, non_finite_entries


def export_random_model(config: Path, folder: Path, name: str,
                        init: Callable[[nn.Module], None] | None = None,
                        shape: tuple[int, int] = (96, 128)) -> tuple[nn.Module, Path]:
    """The config's model (seed 0, eval mode, ``init`` applied), saved as ``folder/name.pth``
    and exported to ``folder/onnx`` at ``shape``: (the model, its ``end2end.onnx``).

    Built with uninitialised memory as NaN: a weight that neither the modules nor ``init``
    initialise (DINO's ``level_embed`` without
    :func:`~convnext_dense.apis.models.initialise_weights`) fails here every
    time, not now and then in a comparison."""
    torch.manual_seed(0)
    with nan_for_uninitialised_memory():
        model = build_model(load_config(str(config))).eval()
        if init is not None:
            init(model)
    not_initialised = non_finite_entries(model)
    assert not not_initialised, f'{config}: not initialised: {not_initialised}'
    checkpoint = folder / f'{name}.pth'
    torch.save({'state_dict': model.state_dict()}, checkpoint)
    return model, export_onnx(str(config), str(checkpoint), folder / 'onnx', shape=shape)


def runtime_and_test_dataset(cfg: Config, onnx_file: Path, scope: str) -> tuple[nn.Module, Any]:
    """The export as tools/test.py builds it from ``cfg`` (the runtime model, registered in
    ``scope``'s registry, as mmengine's Runner builds it) and the config's test dataset."""
    cfg = copy.deepcopy(cfg)
    use_onnx_runtime(cfg, str(onnx_file))
    registry = importlib.import_module(f'{scope}.registry')
    with DefaultScope.overwrite_default_scope(scope):
        runtime = registry.MODELS.build(cfg.model).eval()
        dataset = registry.DATASETS.build(cfg.test_dataloader.dataset)
    return runtime, dataset


def paired_predictions(model: nn.Module, runtime: nn.Module,
                       dataset: Any) -> Iterator[tuple[Any, Any]]:
    """(PyTorch's, the runtime's) data sample for each image of ``dataset``, a batch of one
    each, as the test loop feeds them."""
    for index in range(len(dataset)):
        batch = pseudo_collate([dataset[index]])
        with torch.no_grad():
            yield (model.test_step(copy.deepcopy(batch))[0],
                   runtime.test_step(copy.deepcopy(batch))[0])
