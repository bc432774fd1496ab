"""Deployment: export trained detectors and segmentors to ONNX and run them with ONNX Runtime.

- :mod:`.ops`: export-friendly forms of the operations the TorchScript-based ONNX exporter
  cannot export with dynamic shapes (adaptive average pooling), and the exportable NMS and
  RoIAlign the detectors use;
- :mod:`.segmentation`, :mod:`.detection`: graphs with the post-processing inside (class
  map; boxes, scores, labels and instance masks after NMS);
- :mod:`.export`: writes ``end2end.onnx`` and ``deploy.json`` for a config and checkpoint;
- :mod:`.runtime`: ONNX Runtime models that mmengine's Runner tests like a ``.pth``.

``onnx`` and ``onnxruntime`` come with the ``deploy`` extra (``pip install
convnext_dense[deploy]``).
"""
