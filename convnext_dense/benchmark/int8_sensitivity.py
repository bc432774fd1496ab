"""Per-layer int8 sensitivity of a config's exported model, on random weights and inputs.

The model is exported (:func:`convnext_dense.deploy.export.export_onnx`) and quantized as the
speed benchmark quantizes it (:mod:`.onnx_runtime`: every weighted operator, QDQ, per-channel
int8 weights, uint8 activations, calibrated on random inputs); then both files run on other
random inputs and ONNX Runtime's own quantization debugging helpers
(``onnxruntime.quantization.qdq_loss_debug``) compare them. For each quantized operator, three
signal-to-quantization-noise ratios (SQNR, dB, higher is better: 20 log10 of the reference's
norm over the error's):

- **weight**: its fp32 weight against the dequantized int8 weight;
- **input**: its input activation before and after the ``QuantizeLinear``/``DequantizeLinear``
  pair in front of it (the rounding this operator adds to what it reads);
- **output**: its output in the int8 model against the same tensor of the fp32 model (the
  error of everything quantized up to and including it).

Random weights say how the graph's structure reacts to int8 (which operators meet wide
activation ranges), not what a trained model's accuracy becomes: COCO and ADE20K int8
accuracy is not measured here.
"""
from __future__ import annotations

import logging
import statistics
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..apis.models import build_random_model
from ..apis.runner import load_config
from ..deploy.export import export_onnx, graph_inputs, require_onnx, task_of
from ..deploy.quantize import is_depthwise, load_for_quantization
from .onnx_runtime import BENCHMARK_POLICY, int8_file, random_feeds


@dataclass(frozen=True)
class LayerSensitivity:
    """The three SQNRs (dB) of one quantized operator (module docstring)."""

    node: str
    op_type: str
    group: str
    weight_db: float
    input_db: float
    output_db: float

    @property
    def own_db(self) -> float:
        """The lower of the operator's own two roundings (weight, input)."""
        return min(self.weight_db, self.input_db)


def layer_group(node_name: str, op_type: str, depthwise: bool) -> str:
    """Where a node sits: the backbone's stem, downsampling, depthwise or pointwise layers, or
    the top-level module outside the backbone (``neck``, ``decode_head``, ``roi_head``...)."""
    parts = node_name.strip('/').split('/')
    if parts[0] != 'backbone':
        return parts[0]
    if parts[1] == 'downsample_layers.0':
        return 'backbone stem'
    if parts[1].startswith('downsample_layers'):
        return 'backbone downsampling'
    if depthwise:
        return 'backbone depthwise 7x7'
    if op_type in ('MatMul', 'Gemm'):
        return 'backbone pointwise'
    return 'backbone other'


def _sqnr(reference: list[np.ndarray], other: list[np.ndarray]) -> float:
    from onnxruntime.quantization.qdq_loss_debug import (
        compute_signal_to_quantization_noice_ratio,
    )
    return float(compute_signal_to_quantization_noice_ratio(reference, other))


def _activations(onnx_file: Path, op_types: list[str], feeds: list[dict]) -> dict:
    """The inputs and outputs of ``op_types``' nodes of ``onnx_file`` on ``feeds``."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        modify_model_output_intermediate_tensors,
    )
    augmented = onnx_file.with_name(onnx_file.stem + '_augmented.onnx')
    modify_model_output_intermediate_tensors(str(onnx_file), str(augmented), op_types)
    try:
        return collect_activations(str(augmented), feeds)
    finally:
        augmented.unlink()


def compare_files(fp32_file: Path, int8_file_: Path, feeds: list[dict]) -> list[LayerSensitivity]:
    """The sensitivity of each operator quantized in ``int8_file_`` (a QDQ quantization of
    ``fp32_file``), on ``feeds``."""
    onnx, _ = require_onnx()
    from onnxruntime.quantization.qdq_loss_debug import (
        compute_activation_error,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
    )
    # the graph quantize_file quantized, its weights by the names it gave them
    fp32_model, quantized_names = load_for_quantization(fp32_file, BENCHMARK_POLICY)
    quantized = set(quantized_names)
    nodes = [node for node in fp32_model.graph.node if node.name in quantized]
    op_types = sorted({node.op_type for node in nodes})
    unshared = int8_file_.with_name(int8_file_.stem + '_fp32_unshared.onnx')
    onnx.save(fp32_model, str(unshared))
    try:
        float_acts = _activations(unshared, op_types, feeds)
        int8_acts = _activations(int8_file_, op_types + ['QuantizeLinear', 'DequantizeLinear'],
                                 feeds)
        # create_weight_matching logs an error for each int32 bias (its float twin is not an
        # initializer of that name); only the weights are used here
        logging.disable(logging.ERROR)
        try:
            weights = create_weight_matching(str(unshared), str(int8_file_))
        finally:
            logging.disable(logging.NOTSET)
    finally:
        unshared.unlink()
    input_errors = compute_activation_error(create_activation_matching(int8_acts, float_acts))
    weight_errors = compute_weight_error(weights)
    layers = []
    for node in nodes:
        activation, weight, output = node.input[0], node.input[1], node.output[0]
        if activation not in input_errors or weight not in weight_errors:
            continue  # not quantized after all (ONNX Runtime skips some)
        depthwise = is_depthwise(node)
        layers.append(LayerSensitivity(
            node.name, 'Conv (depthwise)' if depthwise else node.op_type,
            layer_group(node.name, node.op_type, depthwise), weight_errors[weight],
            input_errors[activation]['qdq_err'], _sqnr(float_acts[output], int8_acts[output])))
    return layers


def measure(config: str, shape: tuple[int, int], images: int = 2, seed: int = 0,
            cfg_options: dict | None = None) -> list[LayerSensitivity]:
    """The sensitivity of each weighted operator of ``config``'s model (random weights, no
    pretrained backbone; ``cfg_options`` on top) at ``shape``, on ``images`` random inputs
    other than the calibration's."""
    options = {'model.backbone.init_cfg': None, **(cfg_options or {})}
    cfg = load_config(config, options)
    model = build_random_model(cfg, seed=seed)
    inputs = graph_inputs(task_of(cfg), torch.randn(1, 3, *shape))
    with tempfile.TemporaryDirectory(prefix='int8_sensitivity_') as tmp:
        checkpoint = Path(tmp) / 'weights.pth'
        torch.save({'state_dict': model.state_dict()}, checkpoint)
        fp32 = export_onnx(config, str(checkpoint), Path(tmp) / 'fp32', shape=shape,
                           cfg_options=options)
        int8 = int8_file(fp32, Path(tmp) / 'int8', inputs)
        return compare_files(fp32, int8, random_feeds(inputs, images, seed=seed + 1))


def markdown(config: str, shape: tuple[int, int], layers: list[LayerSensitivity],
             top: int = 8) -> str:
    """Two tables: the median SQNRs per group of layers, and the ``top`` operators whose own
    rounding (weight or input) is worst."""
    groups: dict[str, list[LayerSensitivity]] = {}
    for layer in layers:
        groups.setdefault(layer.group, []).append(layer)
    lines = [f'`{Path(config).name}` at {shape[0]}x{shape[1]}, {len(layers)} quantized '
             'operators (median SQNR per group, dB; lowest in brackets):', '',
             '| layers | operators | weight | input | output |', '|---|---|---|---|---|']
    for group, members in groups.items():
        cells = [f'{statistics.median(values):.1f} ({min(values):.1f})' for values in (
            [m.weight_db for m in members], [m.input_db for m in members],
            [m.output_db for m in members])]
        lines.append(f'| {group} | {len(members)} | ' + ' | '.join(cells) + ' |')
    lines += ['', f'The {top} operators with the lowest own SQNR (weight or input):', '',
              '| operator | type | weight | input | output |', '|---|---|---|---|---|']
    for layer in sorted(layers, key=lambda item: item.own_db)[:top]:
        lines.append(f'| `{layer.node}` | {layer.op_type} | {layer.weight_db:.1f} | '
                     f'{layer.input_db:.1f} | {layer.output_db:.1f} |')
    return '\n'.join(lines) + '\n'


__all__ = ['LayerSensitivity', 'compare_files', 'layer_group', 'markdown',
           'measure']
