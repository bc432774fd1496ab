"""Compare this backbone, loaded with converted weights, with a source's own model."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from convnext_dense import ConvNeXt
from tests.conftest import relative_error

#: A small input with unequal sides (64x96: strides 4..32 give 16x24 .. 2x3).
INPUT = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def pretrained_backbone(checkpoint: str | Path, **kwargs) -> ConvNeXt:
    """A backbone loaded through ``init_cfg=dict(type='Pretrained')``, as configs do."""
    backbone = ConvNeXt(init_cfg=dict(type='Pretrained', checkpoint=str(checkpoint)), **kwargs)
    backbone.init_weights()
    return backbone.eval()


def assert_stage_features_match(backbone: ConvNeXt, stage_outputs: Sequence[torch.Tensor],
                                normalised: bool = False, tol: float = 1e-5) -> None:
    """The backbone's outputs on :data:`INPUT` against a reference model's stage outputs.

    ``stage_outputs`` are the reference's four un-normalised stage outputs (put through
    the backbone's own output norms ``norm{i}`` here), or its normalised feature maps
    when ``normalised``.
    """
    assert len(stage_outputs) == 4
    with torch.no_grad():
        actual = backbone(INPUT)
        expected = [out if normalised else getattr(backbone, f'norm{i}')(out)
                    for i, out in enumerate(stage_outputs)]
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert a.shape == e.shape, (i, a.shape, e.shape)
        assert relative_error(a, e) < tol, f'stage {i}: relative error {relative_error(a, e)}'
