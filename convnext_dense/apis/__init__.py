"""What the tools do: train/test config preparation, data checks, model complexity, model
loading, inference, whole-checkpoint conversion checked against a config's model.

Submodules are imported where used (``from convnext_dense.apis.runner import ...``): this
package's ``__init__`` imports nothing, and ``import convnext_dense`` does not import it.
It builds on ``checkpoint``, ``models`` and ``engine`` and never imports ``deploy``, which
builds on it: for an exported ``.onnx`` the caller passes the runtime from
:mod:`convnext_dense.deploy.runtime` (``prepare_test_cfg(..., onnx_runtime=use_onnx_runtime)``,
``run_inference(..., load_onnx=load_onnx_model)``), as the tools do.
"""
