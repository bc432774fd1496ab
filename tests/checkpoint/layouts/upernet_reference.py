"""Small UperNets on both sides: transformers' ``UperNetForSemanticSegmentation`` and this
project's config's model, with random non-trivial weights, and their logits.

The config is ``configs/upernet_convnext_t_ade20k_512.py`` with a small backbone (depths
1-1-2-1, dims 16-24-32-40), head widths 32 (decode) and 16 (auxiliary) and 5 classes;
``transformers_upernet`` builds the same model in transformers.
"""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    ConvNextConfig,
    ConvNextV2Config,
    UperNetConfig,
    UperNetForSemanticSegmentation,
)

from tests.conftest import REPO, randomize_

DEPTHS, DIMS = [1, 1, 2, 1], [16, 24, 32, 40]
CLASSES = ('sky', 'road', 'car', 'tree', 'person')
HIDDEN, AUX_CHANNELS = 32, 16
#: Not square: strides 4..32 give 16x24 .. 2x3 (pool scale 6 upsamples that).
INPUT = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
SEG_CONFIG = REPO / 'configs/upernet_convnext_t_ade20k_512.py'


def _merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(
            merged.get(key), dict) else value
    return merged


def write_small_config(directory: Path, v2: bool = False, model: dict | None = None,
                       extra: str = '', name: str = 'upernet_small.py') -> Path:
    """The T UperNet config, scaled down to the small model; ``model``: overrides of its
    model dict (merged key by key), ``extra``: more config lines."""
    small = dict(
        backbone=dict(arch=None, depths=DEPTHS, dims=DIMS, init_cfg=None,
                      **(dict(use_grn=True, layer_scale_init_value=0.0) if v2 else {})),
        decode_head=dict(in_channels=DIMS, channels=HIDDEN, num_classes=len(CLASSES)),
        auxiliary_head=dict(in_channels=DIMS[2], channels=AUX_CHANNELS,
                            num_classes=len(CLASSES)))
    path = directory / name
    path.write_text(f'_base_ = {str(SEG_CONFIG)!r}\n'
                    f'model = {_merge(small, model or {})!r}\n'
                    f'test_dataloader = dict(dataset=dict(metainfo=dict(classes={CLASSES})))\n'
                    + extra)
    return path


def transformers_upernet(v2: bool = False, depths: list[int] = DEPTHS,
                         hidden_sizes: list[int] = DIMS,
                         **overrides) -> UperNetForSemanticSegmentation:
    """transformers' UperNet of the small config (``overrides``: UperNetConfig's)."""
    backbone_cls = ConvNextV2Config if v2 else ConvNextConfig
    backbone = backbone_cls(depths=depths, hidden_sizes=hidden_sizes,
                            out_features=['stage1', 'stage2', 'stage3', 'stage4'])
    settings = {**dict(hidden_size=HIDDEN, auxiliary_channels=AUX_CHANNELS,
                       id2label=dict(enumerate(CLASSES))), **overrides}
    return UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, **settings))


def randomize_model_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights (:func:`randomize_`), BatchNorm scales near 1 and running statistics
    away from their initial values; eval mode."""
    randomize_(model, seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                shape = module.running_mean.shape
                module.weight.copy_(1 + 0.1 * torch.randn(shape, generator=generator))
                module.running_mean.copy_(0.2 * torch.randn(shape, generator=generator))
                module.running_var.copy_(0.5 + torch.rand(shape, generator=generator))
                module.num_batches_tracked.fill_(1000)
    scales = [p for n, p in model.named_parameters()
              if n.endswith(('gamma', 'layer_scale_parameter')) or '.grn.' in n]
    assert all(p.abs().min() > 0 for p in scales)  # not at their init values (zero)
    return model.eval()


def dense_logits(model: torch.nn.Module, inputs: torch.Tensor = INPUT) -> torch.Tensor:
    """This project's segmentor's logits at the input size (``encode_decode``)."""
    metas = [dict(img_shape=tuple(inputs.shape[2:]))] * len(inputs)
    with torch.no_grad():
        return model.encode_decode(inputs, metas)


def dense_auxiliary_logits(model: torch.nn.Module, inputs: torch.Tensor = INPUT) -> torch.Tensor:
    """The auxiliary head's logits resized to the input, as transformers computes them."""
    with torch.no_grad():
        logits = model.auxiliary_head(model.extract_feat(inputs))
        return torch.nn.functional.interpolate(logits, size=inputs.shape[2:], mode='bilinear',
                                               align_corners=False)


def hf_logits(model: UperNetForSemanticSegmentation,
              inputs: torch.Tensor = INPUT) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' logits and auxiliary logits at the input size."""
    with torch.no_grad():
        logits = model(pixel_values=inputs).logits
        if model.auxiliary_head is None:
            return logits, None
        features = model.backbone(inputs).feature_maps
        aux = torch.nn.functional.interpolate(
            model.auxiliary_head(features), size=inputs.shape[2:], mode='bilinear',
            align_corners=False)
    return logits, aux
