"""The ConvNeXt backbone and its building blocks (the arch table: :mod:`convnext_dense.arch`)."""
from .backbone import ConvNeXt
from .layers import ConvNeXtBlock, GlobalResponseNorm, LayerNorm2d
from .seg_tta import SegTTAModelWithTestCfg

__all__ = ['ConvNeXt', 'ConvNeXtBlock', 'GlobalResponseNorm', 'LayerNorm2d',
           'SegTTAModelWithTestCfg']
