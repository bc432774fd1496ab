"""ConvNeXt backbone for MMDetection 3.x and MMSegmentation 1.x.

``import convnext_dense`` (or ``custom_imports=dict(imports=['convnext_dense'])``
in a config) registers ``ConvNeXt`` in the model registry of each installed
toolbox.
"""
from .backbone import ARCH_SETTINGS, ConvNeXt
from .registry import register_models

__version__ = '0.1.0'

REGISTERED_SCOPES = register_models(ConvNeXt)

__all__ = ['ARCH_SETTINGS', 'ConvNeXt', 'REGISTERED_SCOPES', '__version__']
