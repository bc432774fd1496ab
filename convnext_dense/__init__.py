"""ConvNeXt backbone for MMDetection 3.x and MMSegmentation 1.x.

``import convnext_dense`` (or ``custom_imports=dict(imports=['convnext_dense'])``
in a config) registers ``ConvNeXt`` in the model registry and
``ConvNeXtLayerDecayOptimizerConstructor`` in the optimizer-wrapper-constructor
registry of each installed toolbox, and ``ReplicaSyncCheckHook`` in mmengine's hook
registry (the parent of mmdet's and mmseg's, so their configs find it too).
"""
from mmengine.registry import HOOKS

from .backbone import ARCH_SETTINGS, ConvNeXt
from .checkpoint_io import make_local_writes_atomic
from .hooks import ReplicaSyncCheckHook
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor, get_layer_id, get_lr_scale
from .registry import register, register_in_toolboxes, register_models
from .safe_loading import allow_mmengine_checkpoints

__version__ = '0.1.0'

REGISTERED_SCOPES = register_models(ConvNeXt)
register_in_toolboxes('OPTIM_WRAPPER_CONSTRUCTORS', ConvNeXtLayerDecayOptimizerConstructor)
# once, in mmengine's root registry: mmdet's and mmseg's HOOKS look it up there
register(HOOKS, ReplicaSyncCheckHook)
# mmengine's own checkpoints (resume, load_from, tools/test.py) under weights_only=True
allow_mmengine_checkpoints()
# checkpoints are never left half-written
make_local_writes_atomic()

__all__ = ['ARCH_SETTINGS', 'ConvNeXt', 'ConvNeXtLayerDecayOptimizerConstructor',
           'REGISTERED_SCOPES', 'ReplicaSyncCheckHook', '__version__', 'get_layer_id',
           'get_lr_scale']
