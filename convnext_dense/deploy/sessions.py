"""The runtimes that run an exported ``end2end.onnx`` on the CPU, behind one interface.

- ``onnxruntime``: an ONNX Runtime ``InferenceSession`` (CPU execution provider);
- ``openvino``: OpenVINO's CPU plugin, reading the same ONNX file directly (no conversion
  step), in fp32 (``INFERENCE_PRECISION_HINT=f32``: on CPUs with bf16 units OpenVINO would
  otherwise compute in bf16). An int8 (QDQ) export runs in int8 in both.

A :class:`Session` gives the graph's input and output names and ``run(feed)``: the outputs, in
the graph's order, as numpy arrays.
"""
from __future__ import annotations

import functools
import importlib
import os
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .format import require_onnx

#: the runtimes, by their ``--runtime`` name
RUNTIMES = ('onnxruntime', 'openvino')
DEFAULT_RUNTIME = 'onnxruntime'


class Session(Protocol):
    """An opened export: its input/output names and a function that runs it."""

    input_names: list[str]
    output_names: list[str]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs for the named inputs, in :attr:`output_names` order."""


class RuntimeLoadError(ValueError):
    """The runtime cannot load the file."""


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`.

    Raises:
        ValueError: naming the allowed runtimes.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f'--runtime {runtime!r}: unknown runtime; choose one of '
                         f'{", ".join(RUNTIMES)}')
    return runtime


def runtime_for(model_path: str | os.PathLike, runtime: str | None) -> str:
    """The runtime of a tool's ``--runtime`` for ``model_path``: :data:`DEFAULT_RUNTIME` when
    not given.

    Raises:
        ValueError: an unknown runtime, or a runtime given for a model that is not an
            ``.onnx`` (a ``.pth`` runs in PyTorch).
    """
    if runtime is None:
        return DEFAULT_RUNTIME
    check_runtime(runtime)
    if Path(model_path).suffix.lower() != '.onnx':
        raise ValueError(f'--runtime {runtime}: runs an exported end2end.onnx; {model_path} is '
                         'not an .onnx (a PyTorch checkpoint runs in PyTorch: drop --runtime)')
    return runtime


def require_openvino() -> Any:
    """Import ``openvino`` or say which extra installs it."""
    try:
        return importlib.import_module('openvino')
    except ImportError:
        raise ImportError("openvino not installed: --runtime openvino needs it; install the "
                          "extra: pip install 'convnext_dense[deploy]' (onnx, onnxruntime, "
                          'openvino)') from None


class OnnxRuntimeSession:
    """ONNX Runtime's CPU execution provider."""

    def __init__(self, onnx_file: str | os.PathLike, threads: int | None = None) -> None:
        _, ort = require_onnx()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(onnx_file), options,
                                                providers=['CPUExecutionProvider'])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise RuntimeLoadError(f'{onnx_file}: ONNX Runtime cannot load it: {exc}') from None
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.session.run(None, feed)


@functools.cache
def openvino_core() -> Any:
    """The process's one ``openvino.Core``, kept until the process ends.

    OpenVINO's CPU plugin (2026.4) installs an alternate signal stack on the thread that
    creates a ``Core`` and, when that ``Core`` is destroyed, puts back the one it found. Two
    ``Core`` objects destroyed in the order they were made leave the thread's alternate stack
    pointing to unmapped memory, and the next signal with a Python handler (Python installs
    them with ``SA_ONSTACK``: SIGTERM, SIGINT, the SIGCHLD of DataLoader workers) kills the
    process with a segmentation fault. One ``Core`` that lives as long as the process keeps that
    stack valid.
    """
    return require_openvino().Core()


class OpenVINOSession:
    """OpenVINO's CPU plugin on the ONNX file, fp32 inference precision."""

    def __init__(self, onnx_file: str | os.PathLike, threads: int | None = None) -> None:
        require_openvino()  # names the extra, also once the Core exists
        core = openvino_core()
        config: dict[str, Any] = {'INFERENCE_PRECISION_HINT': 'f32'}
        if threads:
            config['INFERENCE_NUM_THREADS'] = int(threads)
        try:
            self.model = core.compile_model(core.read_model(str(onnx_file)), 'CPU', config)
        except Exception as exc:  # OpenVINO raises RuntimeError and its own types
            raise RuntimeLoadError(f'{onnx_file}: OpenVINO cannot load it: {exc}') from None
        self.input_names = [port.get_any_name() for port in self.model.inputs]
        self.output_names = [port.get_any_name() for port in self.model.outputs]
        self.request = self.model.create_infer_request()

    def run(self, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        results = self.request.infer(feed)
        return [np.array(results[port]) for port in self.model.outputs]


def open_runtime_session(onnx_file: str | os.PathLike, runtime: str = DEFAULT_RUNTIME,
                         threads: int | None = None) -> Session:
    """A CPU session of ``runtime`` (:data:`RUNTIMES`) for ``onnx_file``.

    Raises:
        ValueError: an unknown runtime (named); :class:`RuntimeLoadError`: the runtime cannot
            load the file.
        ImportError: the runtime is not installed (naming the ``deploy`` extra).
    """
    check_runtime(runtime)
    if not Path(onnx_file).is_file():
        raise FileNotFoundError(f'{onnx_file}: no such ONNX file')
    if runtime == 'openvino':
        return OpenVINOSession(onnx_file, threads)
    return OnnxRuntimeSession(onnx_file, threads)


__all__ = ['DEFAULT_RUNTIME', 'RUNTIMES', 'OnnxRuntimeSession', 'OpenVINOSession',
           'RuntimeLoadError', 'Session', 'check_runtime', 'open_runtime_session',
           'openvino_core', 'require_openvino', 'runtime_for']
