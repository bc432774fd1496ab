"""ConvNeXt backbone for MMDetection 3.x and MMSegmentation 1.x.

``import convnext_dense`` (or ``custom_imports=dict(imports=['convnext_dense'])``
in a config) registers modules and changes nothing else:

- ``ConvNeXt`` in the model registry of each installed toolbox (mmdet, mmseg), and
  ``SegTTAModelWithTestCfg`` (test-time augmentation with its own inference mode) in mmseg's;
- ``ConvNeXtLayerDecayOptimizerConstructor`` in their optimizer-wrapper-constructor
  registries;
- ``ReplicaSyncCheckHook`` in mmengine's hook registry and the ``ConvNeXtPretrained``
  weight initialiser in mmengine's (the parents of mmdet's and mmseg's, so their
  configs find them too);
- the config scope ``convnext_dense::`` (the configs shipped in the package) in
  mmengine's table of packages with configs.

Before that it checks that mmengine and mmcv are installed from one OpenMMLab stack (upstream
or the maintained onedl forks; :mod:`convnext_dense.stack`), from the installed metadata only.
With the forks' mmseg it corrects that table's ``mmseg`` entry, which names a distribution
the fork does not have (:func:`~convnext_dense.engine.runtime_fixes.fix_config_scope_packages`;
nothing changes on upstream).

The fixes to mmengine's global behaviour that training on torch >= 2.6 needs are
opt-in: :func:`enable_runtime_fixes` (or ``'convnext_dense.enable_fixes'`` in
``custom_imports``); see :mod:`convnext_dense.engine.runtime_fixes`.

It loads the backbone, its layers, the checkpoint reading the backbone's ``init_cfg`` needs,
the layer-decay constructor and the hooks, and nothing of ``apis``, ``deploy``, ``demo``,
``benchmark``, onnx or onnxruntime. The exported models run by ONNX Runtime
(``ONNXRuntimeDetector``, ``ONNXRuntimeSegmentor``) are registered by
``import convnext_dense.deploy`` (``custom_imports=dict(imports=['convnext_dense',
'convnext_dense.deploy'])``); the project's tools import it.

Layout, lowest first (a subpackage imports only from those before it): ``checkpoint`` (io,
formats, conversion, safe loading), ``models`` (backbone, layers, TTA), ``engine`` (layer
decay, hooks, the opt-in fixes), ``apis`` (train/test preparation, data checks, complexity,
model loading, inference), ``deploy`` (ONNX export and ONNX Runtime models), ``demo`` and
``benchmark`` (applications).
"""
# ruff: noqa: E402  (the stack check runs before the first import of mmengine/mmcv)
from .stack import check_stack

# mmengine and mmcv from one OpenMMLab stack (upstream or the onedl forks): a clear error
# naming what is missing and the verified versions, before the first import of them
check_stack()

from mmengine.registry import HOOKS

from .arch import ARCH_SETTINGS
from .checkpoint.convert import ConvNeXtPretrainedInit
from .engine.hooks import ReplicaSyncCheckHook
from .engine.layer_decay import (
    ConvNeXtLayerDecayOptimizerConstructor,
    get_layer_id,
    get_lr_scale,
)
from .engine.runtime_fixes import enable_runtime_fixes, fix_config_scope_packages
from .models.backbone import ConvNeXt
from .models.seg_tta import SegTTAModelWithTestCfg
from .registry import register, register_config_scope, register_in_toolboxes, register_models

__version__ = '0.2.0'

REGISTERED_SCOPES = register_models(ConvNeXt)
register_models(SegTTAModelWithTestCfg, toolboxes=('mmseg',))
register_in_toolboxes('OPTIM_WRAPPER_CONSTRUCTORS', ConvNeXtLayerDecayOptimizerConstructor)
# once, in mmengine's root registry: mmdet's and mmseg's HOOKS look it up there
register(HOOKS, ReplicaSyncCheckHook)
# `_base_ = 'convnext_dense::configs/...'`: the shipped configs, for configs loaded after this
register_config_scope()
# `mmseg::` bases with onedl-mmsegmentation (its entry names a distribution it does not have)
fix_config_scope_packages()

__all__ = ['ARCH_SETTINGS', 'ConvNeXt', 'ConvNeXtLayerDecayOptimizerConstructor',
           'ConvNeXtPretrainedInit', 'REGISTERED_SCOPES', 'ReplicaSyncCheckHook',
           'SegTTAModelWithTestCfg', '__version__', 'enable_runtime_fixes', 'get_layer_id',
           'get_lr_scale']
