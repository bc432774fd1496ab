"""mmseg's test-time augmentation with its own inference mode for the augmented runs.

The release's ADE20K multi-scale + flip numbers come from whole-image inference at six
scales, while its single-scale numbers use the sliding window. An mmseg 1.x config has one
``model.test_cfg``; :class:`SegTTAModelWithTestCfg` gives the TTA runs their own
(``tta_model = dict(type='SegTTAModelWithTestCfg', test_cfg=dict(mode='whole'))``), so that
``tools/test.py`` and ``tools/test.py --tta`` (ours and mmseg's) each run as the release did.
"""
from __future__ import annotations

from typing import Any

from mmengine.config import ConfigDict
from mmengine.model import BaseTTAModel
from torch import nn


class SegTTAModelWithTestCfg(BaseTTAModel):
    """mmseg's ``SegTTAModel`` whose segmentor runs with ``test_cfg`` during TTA.

    Args:
        module: The segmentor (an ``EncoderDecoder`` or its config).
        test_cfg: Replaces the segmentor's ``test_cfg`` for the augmented runs, e.g.
            ``dict(mode='whole')``; ``None`` keeps the segmentor's own.
        data_preprocessor: As for mmengine's ``BaseTTAModel``.
    """

    def __init__(self, module: dict | nn.Module, test_cfg: dict | None = None,
                 data_preprocessor: dict | nn.Module | None = None) -> None:
        super().__init__(module, data_preprocessor)
        if test_cfg is not None:
            mode = test_cfg.get('mode')
            if mode not in ('whole', 'slide'):
                raise ValueError(f"tta_model.test_cfg.mode must be 'whole' or 'slide', "
                                 f'got {mode!r}')
            self.module.test_cfg = ConfigDict(test_cfg)

    def merge_preds(self, data_samples_list: list[list[Any]]) -> list[Any]:
        """Average the augmented runs' softmax scores, exactly as mmseg's ``SegTTAModel``."""
        from mmseg.models.segmentors.seg_tta import SegTTAModel
        return SegTTAModel.merge_preds(self, data_samples_list)
