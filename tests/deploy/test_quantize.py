"""int8 exports (convnext_dense.deploy.quantize): the graph is QDQ with per-channel weights and
fp32 LayerNorms, it runs and stays close to the fp32 export, and bad requests are refused by
name.

One random-weight UperNet demo model (ConvNeXt-atto, the demo's graph) is exported in fp32 and
in int8 once for the module, calibrated on 4 images of a generated training set; the Mask
R-CNN demo model likewise, in int8 only (compared with PyTorch).
"""
from __future__ import annotations

import collections
import json
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from mmengine.config import Config
from onnx import numpy_helper

from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import load_config
from convnext_dense.demo.data import make_ade20k_dataset, make_coco_dataset
from convnext_dense.demo.run import data_root_options
from convnext_dense.deploy.errors import ExportError
from convnext_dense.deploy.export import export_graph, export_onnx, graph_inputs
from convnext_dense.deploy.quantize import (
    MIN_CALIB_IMAGES,
    QuantizationPolicy,
    calibration_count,
    export_int8,
    module_path,
    nodes_to_quantize,
    quantize_file,
)
from tests.conftest import relative_error, run_tool_main

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / 'configs/demo/upernet_convnext_demo.py')
DET_DEMO = str(REPO / 'configs/demo/mask_rcnn_convnext_demo.py')
DEEPLAB_DEMO = str(REPO / 'configs/demo/deeplabv3plus_convnext_demo.py')
CASCADE = str(REPO / 'configs/cascade_mask_rcnn_convnext_t_coco.py')


class Exports(NamedTuple):
    graph: torch.nn.Module  # the exported module (fp32, eager)
    int8: Path
    options: dict


@pytest.fixture(scope='module')
def exports(tmp_path_factory) -> Exports:
    tmp = tmp_path_factory.mktemp('int8')
    data_root = make_ade20k_dataset(tmp / 'data', num_train=6, num_val=1, image_size=(64, 96),
                                    seed=5)
    options = data_root_options(Config.fromfile(SEG_DEMO), data_root)
    torch.manual_seed(0)
    model = build_model(load_config(SEG_DEMO, options))  # zero biases: shared by the exporter
    torch.save({'state_dict': model.state_dict()}, tmp / 'seg.pth')
    int8 = export_int8(SEG_DEMO, str(tmp / 'seg.pth'), tmp / 'int8', calib_images=4,
                       cfg_options=options)
    return Exports(export_graph(model, 'segmentation').eval(), int8, options)


def _producers(graph) -> dict[str, onnx.NodeProto]:
    return {output: node for node in graph.node for output in node.output}


def _weight_quantized(graph) -> list[onnx.NodeProto]:
    """The weighted nodes whose weight comes out of a DequantizeLinear."""
    producers = _producers(graph)
    return [n for n in graph.node if n.op_type in ('Conv', 'ConvTranspose', 'MatMul', 'Gemm')
            and n.input[1] in producers and producers[n.input[1]].op_type == 'DequantizeLinear']


def test_int8_graph_is_qdq_with_per_channel_weights_and_fp32_layer_norms(exports):
    graph = onnx.load(str(exports.int8)).graph
    producers = _producers(graph)
    initializers = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    weighted = _weight_quantized(graph)
    assert len(weighted) >= 30  # every Conv and pointwise MatMul of backbone and head
    for node in weighted:
        dequantize = producers[node.input[1]]
        weight, scale = (initializers[name] for name in dequantize.input[:2])
        assert weight.dtype == np.int8
        assert scale.size == weight.shape[0 if node.op_type == 'Conv' else 1] > 1  # per channel
        data = producers[node.input[0]]
        assert data.op_type == 'DequantizeLinear'  # uint8 activations
        assert initializers[data.input[2]].dtype == np.uint8
    norms = [n for n in graph.node if n.op_type == 'LayerNormalization']
    assert len(norms) == 20
    for node in norms:  # fp32 in, fp32 weights
        assert all(producers.get(name) is None or producers[name].op_type != 'DequantizeLinear'
                   for name in node.input)
        for name in node.input[1:]:  # weight, bias: fp32 initializers
            assert initializers[name].dtype == np.float32
    # the adaptive pooling's MatMul of two activations stays fp32
    pooling = [n for n in graph.node if n.op_type == 'MatMul' and 'psp_modules' in n.name]
    assert pooling and all(producers[n.input[1]].op_type != 'DequantizeLinear' for n in pooling)
    info = json.loads((exports.int8.parent / 'deploy.json').read_text())
    assert info['quantization']['calibration_images'] == 4
    assert info['quantization']['quantized_nodes'] == len(weighted)
    fp32_bytes = sum(p.numel() * 4 for p in exports.graph.parameters())
    assert exports.int8.stat().st_size < 0.4 * fp32_bytes


def test_onnx_runtime_runs_every_quantized_convolution_in_int8(exports, tmp_path):
    """The exporter feeds equal weights (zero biases) through Identity nodes; unshared before
    quantization, every quantized Conv fuses into QLinearConv (an Identity-fed bias stayed
    fp32 and the Conv ran in fp32 on dequantized weights)."""
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / 'optimized.onnx')
    ort.InferenceSession(str(exports.int8), options, providers=['CPUExecutionProvider'])
    ops = collections.Counter(n.op_type for n in onnx.load(str(tmp_path / 'optimized.onnx'))
                              .graph.node)
    convs = sum(1 for n in onnx.load(str(exports.int8)).graph.node if n.op_type == 'Conv')
    assert ops['QLinearConv'] == convs and ops['Conv'] == 0, ops


def test_int8_logits_are_close_to_fp32(exports):
    generator = np.random.default_rng(0)
    batch = generator.normal(size=(1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        fp32 = exports.graph(torch.from_numpy(batch)).numpy()
    int8 = ort.InferenceSession(str(exports.int8), providers=['CPUExecutionProvider']).run(
        None, {'input': batch})[0]
    relative = np.linalg.norm(int8 - fp32) / np.linalg.norm(fp32)
    assert relative < 0.1, relative
    assert (int8.argmax(1) == fp32.argmax(1)).mean() > 0.9


def test_deeplab_int8_quantizes_the_backbone_only_and_its_logits_stay_close(tmp_path):
    """The verified DeepLabV3+ policy: backbone int8, the ASPP head and decoder fp32; the fp32
    export it quantizes gives PyTorch's logits."""
    data_root = make_ade20k_dataset(tmp_path / 'data', num_train=4, num_val=1,
                                    image_size=(64, 96), seed=5)
    options = data_root_options(Config.fromfile(DEEPLAB_DEMO), data_root)
    torch.manual_seed(0)
    model = build_model(load_config(DEEPLAB_DEMO, options))
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'deeplab.pth')
    fp32_file = export_onnx(DEEPLAB_DEMO, str(tmp_path / 'deeplab.pth'), tmp_path / 'fp32',
                            cfg_options=options)
    int8 = export_int8(DEEPLAB_DEMO, str(tmp_path / 'deeplab.pth'), tmp_path / 'int8',
                       calib_images=4, cfg_options=options, fp32_export=fp32_file)
    quantized = [n.name for n in _weight_quantized(onnx.load(str(int8)).graph)]
    assert len(quantized) > 20 and all(name.startswith('/backbone/') for name in quantized)
    assert json.loads((int8.parent / 'deploy.json').read_text())['quantization'][
        'quantized_modules'] == ['backbone']
    batch = np.random.default_rng(0).normal(size=(1, 3, 64, 96)).astype(np.float32)
    with torch.no_grad():
        fp32 = export_graph(model, 'segmentation').eval()(torch.from_numpy(batch)).numpy()
    fp32_logits, logits = (ort.InferenceSession(str(f), providers=['CPUExecutionProvider']).run(
        None, {'input': batch})[0] for f in (fp32_file, int8))
    assert np.linalg.norm(fp32_logits - fp32) / np.linalg.norm(fp32) < 1e-5
    assert np.linalg.norm(logits - fp32) / np.linalg.norm(fp32) < 0.1


def _graph_of(nodes: list[onnx.NodeProto], weights: list[str]) -> onnx.ModelProto:
    initializers = [numpy_helper.from_array(np.ones((4, 4, 1, 1), np.float32), name)
                    for name in weights]
    value = onnx.helper.make_tensor_value_info('x', onnx.TensorProto.FLOAT, None)
    return onnx.helper.make_model(onnx.helper.make_graph(nodes, 'g', [value], [value],
                                                         initializers))


def test_policy_quantizes_the_modules_it_names_and_the_depthwise_convolutions_if_it_says():
    make = onnx.helper.make_node
    model = _graph_of([
        make('Conv', ['x', 'w0'], ['a'], name='/backbone/stages.0/dwconv/Conv', group=4),
        make('MatMul', ['a', 'w1'], ['b'], name='/backbone/stages.0/pwconv1/MatMul'),
        make('Conv', ['b', 'w2'], ['c'], name='/decode_head/conv_seg/Conv', group=1),
        make('MatMul', ['c', 'c'], ['d'], name='/decode_head/pool/MatMul'),  # no weight
        make('LayerNormalization', ['d', 'w3'], ['x'], name='/backbone/norm0/LN'),
    ], ['w0', 'w1', 'w2', 'w3'])
    quantized = {(depthwise, modules): nodes_to_quantize(model, QuantizationPolicy(depthwise,
                                                                                     modules))
                 for depthwise in (True, False)
                 for modules in (None, ('backbone',), ('decode_head',))}
    assert quantized == {
        (True, None): ['/backbone/stages.0/dwconv/Conv', '/backbone/stages.0/pwconv1/MatMul',
                       '/decode_head/conv_seg/Conv'],
        (True, ('backbone',)): ['/backbone/stages.0/dwconv/Conv',
                                '/backbone/stages.0/pwconv1/MatMul'],
        (True, ('decode_head',)): ['/decode_head/conv_seg/Conv'],
        (False, None): ['/backbone/stages.0/pwconv1/MatMul', '/decode_head/conv_seg/Conv'],
        (False, ('backbone',)): ['/backbone/stages.0/pwconv1/MatMul'],
        (False, ('decode_head',)): ['/decode_head/conv_seg/Conv']}
    # a module without weighted operators (misspelt, or renamed in the graph) is refused
    with pytest.raises(ValueError, match='no weighted operator in decode_heads'):
        nodes_to_quantize(model, QuantizationPolicy(True, ('backbone', 'decode_heads')))


def test_a_policy_module_covers_the_modules_inside_it_and_no_namesake():
    make = onnx.helper.make_node
    assert module_path(make('Gemm', ['x', 'w'], ['y'], name='/bbox_head/shared_fcs.0/Gemm')) \
        == 'bbox_head.shared_fcs.0'
    assert module_path(make('Gemm', ['x', 'w'], ['y'], name='Gemm_12')) == ''
    policy = QuantizationPolicy(depthwise=True, modules=('bbox_head.shared_fcs', 'neck'))
    assert policy.quantizes('bbox_head.shared_fcs') and policy.quantizes('bbox_head.shared_fcs.1')
    assert policy.quantizes('neck.fpn_convs.0.conv')
    assert not policy.quantizes('bbox_head.fc_cls') and not policy.quantizes('bbox_head')
    assert not policy.quantizes('neck_extra.conv') and not policy.quantizes('')
    assert QuantizationPolicy(depthwise=True).quantizes('')  # every module, unnamed nodes too


def test_calibration_ranges_cover_every_image(tmp_path):
    """The activation range is the one over all calibration inputs, the first included
    (ONNX Runtime's CalibMaxIntermediateOutputs dropped each full group of inputs unread)."""
    make = onnx.helper.make_node
    model = _graph_of([make('Conv', ['x', 'w'], ['y'], name='/backbone/conv/Conv')], ['w'])
    model.graph.output[0].name = 'y'
    model.graph.input[0].type.tensor_type.shape.dim.extend(
        [onnx.TensorShapeProto.Dimension(dim_value=d) for d in (1, 4, 8, 8)])
    model.opset_import[0].version = 17
    onnx.save(model, tmp_path / 'fp32.onnx')
    generator = np.random.default_rng(0)
    feeds = [{'x': (generator.uniform(-1, 1, (1, 4, 8, 8)) * (100 if i == 0 else 1))
              .astype(np.float32)} for i in range(40)]
    quantize_file(tmp_path / 'fp32.onnx', tmp_path / 'int8.onnx', iter(feeds),
                  QuantizationPolicy(depthwise=True))
    graph = onnx.load(str(tmp_path / 'int8.onnx')).graph
    quantize = next(n for n in graph.node if n.op_type == 'QuantizeLinear' and n.input[0] == 'x')
    scale = next(numpy_helper.to_array(i) for i in graph.initializer if i.name == quantize.input[1])
    assert float(scale) > 100 / 255  # the first input's range, about 200 / 255


@pytest.mark.parametrize('requested, available, message', [
    (MIN_CALIB_IMAGES - 1, 600, 'too few calibration images'),
    (10, 6, 'has only 6 images'),
    (None, MIN_CALIB_IMAGES - 1, 'too few calibration images'),
])
def test_too_few_calibration_images_are_refused(requested, available, message):
    with pytest.raises(ExportError, match=message):
        calibration_count(requested, available, 'data/x')


def test_default_calibration_count_is_capped_by_the_set():
    assert calibration_count(None, 6, 'data/x') == 6
    assert calibration_count(None, 10_000, 'data/x') == 256


def test_an_fp32_export_given_is_quantized_as_the_one_export_int8_makes(exports, tmp_path):
    """``fp32_export`` (what ``make demo-export`` passes) skips the second fp32 export and
    gives the same int8 graph."""
    checkpoint = str(exports.int8.parent.parent / 'seg.pth')
    fp32 = export_onnx(SEG_DEMO, checkpoint, tmp_path / 'fp32', cfg_options=exports.options)
    int8 = export_int8(SEG_DEMO, checkpoint, tmp_path / 'int8', calib_images=4,
                       cfg_options=exports.options, fp32_export=fp32)
    given, made = (onnx.load(str(path)).graph for path in (int8, exports.int8))
    assert [n.op_type for n in given.node] == [n.op_type for n in made.node]
    made_weights = {i.name: numpy_helper.to_array(i) for i in made.initializer}
    for initializer in given.initializer:
        np.testing.assert_array_equal(numpy_helper.to_array(initializer),
                                      made_weights[initializer.name])
    assert json.loads((int8.parent / 'deploy.json').read_text()) == json.loads(
        (exports.int8.parent / 'deploy.json').read_text())


def test_int8_of_an_unverified_model_type_is_refused_by_name(tmp_path):
    with pytest.raises(ExportError, match='--int8 is not verified for a CascadeRCNN with '
                                          'CascadeRoIHead'):
        export_int8(CASCADE, None, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_export_int8_refuses_more_images_than_the_training_set_has(exports, tmp_path):
    with pytest.raises(ExportError, match='--calib-images 7: the training set .* has only 6'):
        export_int8(SEG_DEMO, None, tmp_path / 'out', calib_images=7,
                    cfg_options=exports.options)
    assert not (tmp_path / 'out').exists()


def test_tools_export_int8_prints_the_refusal(tmp_path):
    result = run_tool_main('export', CASCADE, 'x.pth', '--out-dir', str(tmp_path / 'o'),
                           '--int8')
    assert result.returncode == 1
    assert result.stderr.startswith('error: ') and '--int8 is not verified' in result.stderr
    with pytest.raises(SystemExit):
        run_tool_main('export', CASCADE, 'x.pth', '--out-dir', str(tmp_path / 'o'),
                      '--calib-images', '8')


@pytest.fixture(scope='module')
def det_int8(tmp_path_factory) -> tuple[torch.nn.Module, Path]:
    """A random-weight Mask R-CNN demo model (ConvNeXt-atto) and its int8 export with the
    verified policy, on 100 proposals (the same graph as 300), calibrated on 4 images."""
    tmp = tmp_path_factory.mktemp('int8_det')
    data_root = make_coco_dataset(tmp / 'data', num_train=4, num_val=1, image_size=(128, 160),
                                  seed=3)
    options = dict(data_root_options(Config.fromfile(DET_DEMO), data_root),
                   **{'model.test_cfg.rpn.max_per_img': 100})
    torch.manual_seed(0)
    model = build_model(load_config(DET_DEMO, options)).eval()
    torch.save({'state_dict': model.state_dict()}, tmp / 'det.pth')
    return model, export_int8(DET_DEMO, str(tmp / 'det.pth'), tmp / 'int8', calib_images=4,
                              cfg_options=options)


def test_mask_rcnn_int8_export_is_qdq_runs_and_its_features_stay_close_to_fp32(det_int8):
    """The verified policy's nodes are quantized (all but the box head's); ONNX Runtime runs
    the graph; the feature pyramid that feeds the RPN and RoI heads stays within 10 % of
    PyTorch's (the detections of random weights have near-equal scores, too many ties to
    compare one by one) where the file's own arithmetic computes it (graph optimisations off:
    the QuantizeLinear/DequantizeLinear pairs and fp32 operators, the same on every CPU), and
    within 12.5 % with ONNX Runtime's int8 kernels. (On x86 CPUs without VNNI its uint8 x
    int8 kernels saturate 16-bit sums, as ONNX Runtime's quantization guide says: 9.4-10.1 %
    measured there, against 7.9-8.0 % for the file's arithmetic; under 10 % with VNNI.)"""
    model, int8 = det_int8
    graph = onnx.load(str(int8))
    quantized = {n.name for n in _weight_quantized(graph.graph)}
    weighted = [n for n in graph.graph.node if n.op_type in ('Conv', 'ConvTranspose', 'Gemm')
                or n.name.startswith('/backbone/') and n.op_type == 'MatMul']
    # the verified policy: every weighted operator but the box head's four fc layers
    assert quantized == {n.name for n in weighted if not n.name.startswith('/bbox_head/')}
    assert sum(n.name.startswith('/bbox_head/') for n in weighted) == 4
    info = json.loads((int8.parent / 'deploy.json').read_text())
    assert info['quantization']['quantized_nodes'] == len(quantized) > 30
    assert info['quantization']['quantized_modules'] == ['backbone', 'neck', 'rpn_head',
                                                         'mask_head']
    pyramid = [node.output[0] for node in sorted(  # level 0 (finest) first
        (n for n in graph.graph.node
         if n.name.startswith('/neck/fpn_convs.') and n.op_type == 'Conv'),
        key=lambda n: int(n.name.split('/')[2].split('.')[1]))]
    assert len(pyramid) == 4
    graph.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name)
                              for name in pyramid)
    batch = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 3, 128, 160))
                             .astype(np.float32))
    feeds = {k: v.numpy() for k, v in graph_inputs('detection', batch).items()}
    with torch.no_grad():
        expected = model.extract_feat(batch)
    for optimisation, bound in [(ort.GraphOptimizationLevel.ORT_DISABLE_ALL, 0.1),
                                (ort.GraphOptimizationLevel.ORT_ENABLE_ALL, 0.125)]:
        options = ort.SessionOptions()
        options.graph_optimization_level = optimisation
        session = ort.InferenceSession(graph.SerializeToString(), options,
                                       providers=['CPUExecutionProvider'])
        dets, labels, masks, *features = session.run(None, feeds)
        assert dets.shape == (1, 100, 5) and labels.shape == (1, 100)
        assert masks.shape == (1, 100, 28, 28) and np.isfinite(dets).all()
        for int8_level, fp32_level in zip(features, expected):
            relative = relative_error(torch.from_numpy(int8_level), fp32_level)
            assert relative < bound, (optimisation, relative)
