"""The part every exported graph starts with: the model's backbone and neck."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FeaturesExport(nn.Module):
    """A model's ``backbone`` and ``neck`` (none where the model has none), under the same
    names as in the model (the export's state dict keys stay the model's); the graphs of the
    segmentors and detectors derive from it and add their heads.

    ``model`` is the copy the graph is made from (:func:`~.ops.exportable_copy`).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.backbone = model.backbone
        self.neck = model.neck if getattr(model, 'with_neck', False) else None

    def features(self, input: torch.Tensor) -> Any:  # noqa: A002 (the ONNX name)
        """The backbone's features, through the neck where there is one."""
        features = self.backbone(input)
        return features if self.neck is None else self.neck(features)
