"""Training-time pieces for mmengine: layer-wise lr decay, hooks, the opt-in runtime fixes."""
from .hooks import ReplicaMismatchError, ReplicaSyncCheckHook
from .layer_decay import ConvNeXtLayerDecayOptimizerConstructor, get_layer_id, get_lr_scale
from .runtime_fixes import enable_runtime_fixes

__all__ = ['ConvNeXtLayerDecayOptimizerConstructor', 'ReplicaMismatchError',
           'ReplicaSyncCheckHook', 'enable_runtime_fixes', 'get_layer_id', 'get_lr_scale']
