"""The ConvNeXt backbone and its building blocks."""
from .backbone import ARCH_SETTINGS, NUM_STAGES, STAGE_STRIDES, ConvNeXt
from .layers import ConvNeXtBlock, GlobalResponseNorm, LayerNorm2d
from .seg_tta import SegTTAModelWithTestCfg

__all__ = ['ARCH_SETTINGS', 'NUM_STAGES', 'STAGE_STRIDES', 'ConvNeXt', 'ConvNeXtBlock',
           'GlobalResponseNorm', 'LayerNorm2d', 'SegTTAModelWithTestCfg']
