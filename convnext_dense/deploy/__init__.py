"""Deployment: export trained detectors and segmentors to ONNX and run them with ONNX Runtime.

- :mod:`.ops`: export-friendly forms of the operations the TorchScript-based ONNX exporter
  cannot export with dynamic shapes (adaptive average pooling), and the exportable NMS and
  RoIAlign the detectors use;
- :mod:`.segmentation`, :mod:`.detection`: graphs with the post-processing inside (class
  map; boxes, scores, labels and instance masks after NMS);
- :mod:`.dino`, :mod:`.mask2former`: DINO and Mask2Former (instance, semantic) graphs, their
  deformable attention with standard ONNX operators (:mod:`.msda`);
- :mod:`.format`: the export's file names, graph input/output names and supported model
  types, shared by export and runtime;
- :mod:`.export`: writes ``end2end.onnx`` and ``deploy.json`` for a config and checkpoint;
- :mod:`.runtime`: ONNX Runtime models that mmengine's Runner tests like a ``.pth``.

``import convnext_dense.deploy`` registers ``ONNXRuntimeDetector`` in mmdet's model registry
and ``ONNXRuntimeSegmentor`` in mmseg's (``import convnext_dense`` does not): the project's
tools import it; mmdet's/mmseg's own tools need
``custom_imports=dict(imports=['convnext_dense', 'convnext_dense.deploy'])`` in a config
whose model is one of them. It imports neither ``onnx`` nor ``onnxruntime``: they come with
the ``deploy`` extra (``pip install convnext_dense[deploy]``) and are imported when a model
is exported or opened.
"""
from ..registry import register_models
from .runtime import ONNXRuntimeDetector, ONNXRuntimeSegmentor

register_models(ONNXRuntimeDetector, toolboxes=('mmdet',))
register_models(ONNXRuntimeSegmentor, toolboxes=('mmseg',))

__all__ = ['ONNXRuntimeDetector', 'ONNXRuntimeSegmentor']
