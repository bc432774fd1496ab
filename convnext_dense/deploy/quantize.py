"""int8 exports: ONNX Runtime's static quantization of an fp32 export, calibrated on images of
the config's training set.

``export_int8`` exports the model as :func:`.export.export_onnx` does, then quantizes the graph
with ``onnxruntime.quantization.quantize_static``:

- QDQ format (``QuantizeLinear``/``DequantizeLinear`` pairs around the quantized operators: the
  file stays a standard ONNX graph that ONNX Runtime and OpenVINO both run), activations uint8
  (asymmetric), weights int8 per output channel, biases int32;
- only operators with a weight are quantized: ``Conv``, ``ConvTranspose``, ``Gemm``, and the
  ``MatMul`` of the blocks' pointwise (``nn.Linear``) layers. Everything else stays fp32:
  LayerNorm, GRN, GELU, softmax, the residual additions and layer scales, resizes, the adaptive
  pooling (a ``MatMul`` of two activations) and the post-processing (NMS, RoIAlign, top-k,
  mask pasting);
- which of those are quantized follows a policy per model type (:data:`VERIFIED_POLICIES`),
  chosen by measuring the demo models' metrics (docs/deployment.md has the numbers): UperNet
  quantizes everything, Mask R-CNN everything but its box head, DeepLabV3+ its backbone only
  (those heads in int8 put OpenVINO's metrics too far from ONNX Runtime's). A model type
  whose int8 accuracy has not been measured (Cascade Mask R-CNN, Faster R-CNN) is refused by
  name;
- the activation ranges are the minima and maxima (ONNX Runtime's ``MinMax`` calibration) over
  N images of the config's training set, evenly spaced through it, each run through the
  config's test pipeline and data preprocessor as the runtime prepares an image.

The output folder has the usual ``end2end.onnx`` and ``deploy.json`` (with a ``quantization``
entry saying what was done): the runtime opens it like any export.
"""
from __future__ import annotations

import copy
import importlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope

from ..apis.models import build_model
from ..apis.runner import load_config
from ..apis.toolbox import toolbox_of
from .errors import ExportError
from .export import DEFAULT_OPSET, EXPORT_FILES, export_onnx, graph_inputs, is_previous_export
from .format import DEPLOY_FILE, ONNX_FILE, require_onnx, task_of
from .output_dir import check_output_dir, staged_output

#: calibration images by default (fewer when the training set has fewer)
DEFAULT_CALIB_IMAGES = 256
#: fewer images than this give activation ranges too unreliable to ship
MIN_CALIB_IMAGES = 4
#: the operators with weights, the only ones quantized
WEIGHTED_OPS = ('Conv', 'ConvTranspose', 'Gemm', 'MatMul')


@dataclass(frozen=True)
class QuantizationPolicy:
    """Which weighted operators are quantized (the rest stays fp32).

    Attributes:
        depthwise: the backbone's depthwise 7x7 convolutions (``Conv`` with ``group > 1``).
        modules: the exported graph's modules whose weighted operators are quantized, as
            module paths (:func:`module_path`: ``backbone``, ``neck``, ``rpn_head``,
            ``mask_head``, ``bbox_head.shared_fcs``, ``decode_head``, ...), each with
            everything inside it; ``None``: every module.
    """

    depthwise: bool
    modules: tuple[str, ...] | None = None

    def quantizes(self, path: str) -> bool:
        """Whether the weighted operators of the graph's module ``path`` (:func:`module_path`)
        are quantized: it is one of :attr:`modules` or inside one."""
        return self.modules is None or any(is_inside(path, module) for module in self.modules)


#: (model type, head type) whose int8 export was measured on the demo (docs/deployment.md)
VERIFIED_POLICIES: dict[tuple[str, str], QuantizationPolicy] = {
    ('EncoderDecoder', 'UPerHead'): QuantizationPolicy(depthwise=True),
    # the quick Mask R-CNN demo: with the box head quantized too (or only its first fc),
    # OpenVINO's int8 bbox mAP was 0.007 to 0.009 from ONNX Runtime's (goal: 0.005); with the
    # box head fp32, 0.003 (docs/deployment.md)
    ('MaskRCNN', 'StandardRoIHead'): QuantizationPolicy(
        depthwise=True, modules=('backbone', 'neck', 'rpn_head', 'mask_head')),
    # the quick DeepLabV3+ demo: with the ASPP head quantized too, OpenVINO's int8 mIoU was
    # 0.98 from ONNX Runtime's (goal: 0.2); with the head fp32, 0.01 (docs/deployment.md)
    ('EncoderDecoder', 'DepthwiseSeparableASPPHead'): QuantizationPolicy(depthwise=True,
                                                                         modules=('backbone',)),
}


def _type_name(module_cfg: Any) -> str:
    return str(module_cfg.get('type', '')).split('.')[-1] if module_cfg else ''


def model_kind(cfg: Config) -> tuple[str, str]:
    """``(model type, head type)``: the decode head of a segmentor, the RoI head of a
    detector."""
    head = cfg.model.get('decode_head') or cfg.model.get('roi_head')
    return _type_name(cfg.model), _type_name(head)


def int8_policy(cfg: Config) -> QuantizationPolicy | None:
    """The verified quantization policy of ``cfg``'s model type, ``None`` for a type whose
    int8 export has not been verified."""
    return VERIFIED_POLICIES.get(model_kind(cfg))


def verified_policy(cfg: Config) -> QuantizationPolicy:
    """The quantization policy of ``cfg``'s model type.

    Raises:
        ExportError: the model type's int8 export has not been verified (named, with the
            verified ones).
    """
    policy = int8_policy(cfg)
    if policy is None:
        kind = model_kind(cfg)
        verified = ', '.join(f'{model} with {head}' for model, head in VERIFIED_POLICIES)
        raise ExportError(f'{cfg.filename or "config"}: --int8 is not verified for a {kind[0]} '
                          f'with {kind[1] or "no head"} (its int8 accuracy has not been '
                          f'measured); verified: {verified}. Export it in fp32 (without --int8)')
    return policy


def _weight_is_initializer(node: Any, initializers: set[str]) -> bool:
    return len(node.input) > 1 and node.input[1] in initializers


def is_depthwise(node: Any) -> bool:
    """A ``Conv`` node with groups (the backbone's depthwise 7x7 convolutions)."""
    return node.op_type == 'Conv' and any(a.name == 'group' and a.i > 1 for a in node.attribute)


def is_inside(path: str, module: str) -> bool:
    """Whether the module path ``path`` is ``module`` or a module inside it."""
    return path == module or path.startswith(module + '.')


def module_path(node: Any) -> str:
    """The module path of a node of the exported graph, from its name:
    ``/bbox_head/shared_fcs.0/Gemm`` is ``bbox_head.shared_fcs.0``'s; ``''`` for a node named
    otherwise. A module called more than once has a path per call, the later ones with a
    suffix (the RPN head's convolution, run on each pyramid level: ``rpn_head.rpn_conv``,
    ``rpn_head.rpn_conv_1``, ...), so a policy names the module around such calls."""
    return '.'.join(node.name.split('/')[1:-1]) if node.name.startswith('/') else ''


def nodes_to_quantize(model: Any, policy: QuantizationPolicy) -> list[str]:
    """The names of the graph's nodes ``policy`` quantizes: weighted operators
    (:data:`WEIGHTED_OPS` whose second input is a weight) of the modules the policy names,
    less the depthwise convolutions where the policy keeps them fp32.

    Raises:
        ValueError: the policy names a module the graph has no weighted operator in (a
            misspelt name would quantize nothing of it).
    """
    initializers = {init.name for init in model.graph.initializer}
    weighted = [(node, module_path(node)) for node in model.graph.node
                if node.op_type in WEIGHTED_OPS and _weight_is_initializer(node, initializers)]
    missing = [module for module in policy.modules or ()
               if not any(is_inside(path, module) for _, path in weighted)]
    if missing:
        raise ValueError(f'quantization policy: the graph has no weighted operator in '
                         f'{", ".join(missing)}')
    return [node.name for node, path in weighted if policy.quantizes(path)
            and (policy.depthwise or not is_depthwise(node))]


def unshare_initializers(model: Any) -> int:
    """Give each ``Identity`` of a weight its own copy of the weight, in place.

    The TorchScript exporter stores equal weights once and feeds the others through
    ``Identity`` nodes (zero biases of freshly initialised layers, for instance). ONNX Runtime's
    quantizer leaves a bias it reaches through an ``Identity`` in fp32, and ONNX Runtime then
    cannot fuse that ``Conv`` with its ``QuantizeLinear``/``DequantizeLinear`` pairs into an
    int8 ``QLinearConv``: the convolution runs in fp32 on dequantized weights, slower than
    before quantization.

    Returns:
        The number of ``Identity`` nodes replaced.
    """
    from onnx import numpy_helper
    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    outputs = {output.name for output in graph.output}
    replaced = [node for node in graph.node if node.op_type == 'Identity'
                and node.input[0] in initializers and node.output[0] not in outputs]
    for node in replaced:
        graph.initializer.append(numpy_helper.from_array(
            numpy_helper.to_array(initializers[node.input[0]]), node.output[0]))
        graph.node.remove(node)
    return len(replaced)


def load_for_quantization(fp32_file: str | os.PathLike,
                          policy: QuantizationPolicy) -> tuple[Any, list[str]]:
    """``fp32_file``'s graph with its weights unshared (:func:`unshare_initializers`), and
    the names of the nodes ``policy`` quantizes in it."""
    onnx, _ = require_onnx()
    model = onnx.load(str(fp32_file))
    unshare_initializers(model)
    return model, nodes_to_quantize(model, policy)


def calibration_dataset_cfg(cfg: Config) -> dict:
    """The training set's dataset config with the test pipeline (without annotations)."""
    dataset = copy.deepcopy(cfg.train_dataloader.dataset)
    while 'dataset' in dataset:  # RepeatDataset, ClassBalancedDataset, ...
        dataset = dataset['dataset']
    if 'datasets' in dataset:
        raise ExportError(f'{cfg.filename or "config"}: train_dataloader.dataset is a '
                          f'{dataset.get("type")} of several datasets; calibration reads one '
                          'dataset')
    dataset['pipeline'] = [step for step in cfg.test_dataloader.dataset.pipeline
                           if step['type'] != 'LoadAnnotations']
    return dataset


def build_calibration_dataset(cfg: Config) -> Any:
    toolbox = toolbox_of(cfg)
    importlib.import_module(f'{toolbox}.datasets')
    registry = importlib.import_module(f'{toolbox}.registry').DATASETS
    with DefaultScope.overwrite_default_scope(toolbox):
        return registry.build(calibration_dataset_cfg(cfg))


def calibration_count(requested: int | None, available: int, source: str) -> int:
    """How many images calibrate: ``requested`` (default :data:`DEFAULT_CALIB_IMAGES`, capped
    by the set's size).

    Raises:
        ExportError: fewer than :data:`MIN_CALIB_IMAGES`, or more requested than the set has.
    """
    if requested is not None and requested < MIN_CALIB_IMAGES:
        raise ExportError(f'--calib-images {requested}: too few calibration images, at least '
                          f'{MIN_CALIB_IMAGES} are needed (default {DEFAULT_CALIB_IMAGES})')
    if requested is not None and requested > available:
        raise ExportError(f'--calib-images {requested}: the training set ({source}) has only '
                          f'{available} images')
    count = min(DEFAULT_CALIB_IMAGES, available) if requested is None else requested
    if count < MIN_CALIB_IMAGES:
        raise ExportError(f'{source}: too few calibration images: the training set has '
                          f'{available}, at least {MIN_CALIB_IMAGES} are needed')
    return count


def calibration_feeds(cfg: Config, dataset: Any, count: int,
                      preprocessor: Any) -> Iterator[dict[str, np.ndarray]]:
    """The graph's inputs for ``count`` images evenly spaced through ``dataset``, one image
    per batch, prepared by the test pipeline and ``preprocessor`` (the model's)."""
    task = task_of(cfg)
    for index in np.linspace(0, len(dataset) - 1, count).round().astype(int):
        data = preprocessor(pseudo_collate([dataset[int(index)]]), False)
        shapes = [sample.img_shape[:2] for sample in data['data_samples']]
        inputs = graph_inputs(task, data['inputs'].float(), shapes)
        yield {name: value.numpy() for name, value in inputs.items()}


class FeedReader:
    """ONNX Runtime's ``CalibrationDataReader`` protocol over an iterator of feeds."""

    def __init__(self, feeds: Iterator[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def quantize_file(fp32_file: str | os.PathLike, int8_file: str | os.PathLike,
                  feeds: Iterator[dict[str, np.ndarray]], policy: QuantizationPolicy) -> int:
    """Quantize ``fp32_file`` into ``int8_file`` (QDQ, per-channel int8 weights, uint8
    activations, MinMax ranges over ``feeds``) as ``policy`` says.

    Returns:
        The number of quantized nodes.
    """
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    model, nodes = load_for_quantization(fp32_file, policy)
    quantize_static(model, str(int8_file), FeedReader(feeds),
                    quant_format=QuantFormat.QDQ, op_types_to_quantize=list(WEIGHTED_OPS),
                    nodes_to_quantize=nodes, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)
    return len(nodes)


def export_int8(config: str, checkpoint: str | None, out_dir: str | os.PathLike,
                calib_images: int | None = None, shape: Sequence[int] | None = None,
                dynamic: bool = True, opset: int = DEFAULT_OPSET, force: bool = False,
                cfg_options: dict | None = None,
                policy: QuantizationPolicy | None = None,
                fp32_export: str | os.PathLike | None = None) -> Path:
    """Export ``config``'s model with ``checkpoint``'s weights, quantized to int8.

    Args:
        config, checkpoint, out_dir, shape, dynamic, opset, force, cfg_options: as
            :func:`.export.export_onnx` (the same folder rules: staged, swapped in whole).
        calib_images: calibration images from the training set (default
            :data:`DEFAULT_CALIB_IMAGES`, capped by the set's size; at least
            :data:`MIN_CALIB_IMAGES`).
        policy: what to quantize; default the model type's verified policy (another model
            type is refused). Measurements pass their own.
        fp32_export: the ``end2end.onnx`` of an fp32 export of the same config, checkpoint
            and options, quantized instead of exporting it again (``make demo-export`` passes
            the one it has just written); ``shape``, ``dynamic`` and ``opset`` are then its.

    Returns:
        The path of the quantized ``end2end.onnx``.

    Raises:
        ExportError: an unverified model type, too few calibration images, or what
            :func:`.export.export_onnx` refuses.
    """
    require_onnx()
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force, is_previous_export, 'export', EXPORT_FILES)
    cfg = load_config(config, cfg_options)
    task_of(cfg)  # refuses the model types that do not export, by name
    policy = policy or verified_policy(cfg)
    dataset = build_calibration_dataset(cfg)
    source = calibration_dataset_cfg(cfg).get('data_root') or 'train_dataloader.dataset'
    count = calibration_count(calib_images, len(dataset), str(source))
    preprocessor = build_model(cfg).data_preprocessor.eval()
    with tempfile.TemporaryDirectory(prefix='int8_export_') as tmp:
        fp32 = Path(fp32_export) if fp32_export else export_onnx(
            config, checkpoint, Path(tmp) / 'fp32', shape, dynamic, opset,
            cfg_options=cfg_options)
        info = json.loads((fp32.parent / DEPLOY_FILE).read_text())
        with staged_output(out_dir, force, is_previous_export, 'export',
                           EXPORT_FILES) as staging:
            quantized = quantize_file(fp32, staging / ONNX_FILE,
                                      calibration_feeds(cfg, dataset, count, preprocessor),
                                      policy)
            info['quantization'] = dict(
                tool='onnxruntime.quantization.quantize_static', format='QDQ',
                weights='int8 per channel', activations='uint8', calibration='MinMax',
                calibration_images=count, calibration_set=str(source),
                quantized_nodes=quantized, quantize_depthwise=policy.depthwise,
                quantized_modules=('all' if policy.modules is None
                                   else list(policy.modules)))
            (staging / DEPLOY_FILE).write_text(json.dumps(info, indent=2) + '\n')
    return out_dir / ONNX_FILE


__all__ = ['DEFAULT_CALIB_IMAGES', 'MIN_CALIB_IMAGES', 'QuantizationPolicy', 'VERIFIED_POLICIES',
           'calibration_count', 'export_int8', 'int8_policy', 'is_depthwise', 'is_inside',
           'load_for_quantization', 'model_kind', 'module_path', 'nodes_to_quantize',
           'quantize_file', 'verified_policy']
