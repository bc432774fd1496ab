"""convnext_dense.benchmark.int8_sensitivity and tools/int8_sensitivity.py: the per-layer SQNRs
of an int8 export against its fp32 file, on the UperNet demo config (atto, random weights)."""
from __future__ import annotations

import math

import pytest
import torch

from convnext_dense.benchmark.int8_sensitivity import compare_files, layer_group, markdown
from convnext_dense.benchmark.onnx_runtime import BENCHMARK_POLICY, int8_file, random_feeds
from convnext_dense.deploy.export import graph_inputs
from convnext_dense.deploy.quantize import load_for_quantization
from tests.conftest import REPO, run_tool_main
from tests.deploy.random_exports import export_random_model

SEG_DEMO = REPO / 'configs/demo/upernet_convnext_demo.py'
SHAPE = (64, 64)


@pytest.fixture(scope='module')
def compared(tmp_path_factory):
    """(the random model, its fp32 export, the per-layer results)."""
    folder = tmp_path_factory.mktemp('sensitivity')
    model, fp32 = export_random_model(SEG_DEMO, folder, 'seg', shape=SHAPE)
    inputs = graph_inputs('segmentation', torch.randn(1, 3, *SHAPE))
    int8 = int8_file(fp32, folder / 'int8', inputs)
    return model, fp32, compare_files(fp32, int8, random_feeds(inputs, 2, seed=1))


def test_every_quantized_operator_has_its_three_sqnrs(compared):
    _, fp32, layers = compared
    assert [layer.node for layer in layers] == load_for_quantization(fp32, BENCHMARK_POLICY)[1]
    assert {layer.group for layer in layers} == {
        'backbone stem', 'backbone downsampling', 'backbone depthwise 7x7',
        'backbone pointwise', 'decode_head'}  # the export has no auxiliary head
    for layer in layers:  # 8-bit rounding: tens of dB, never exact (an identity: 100s)
        for value in (layer.weight_db, layer.input_db, layer.output_db):
            assert math.isfinite(value) and 15 < value < 90, layer


def test_weight_sqnr_is_that_of_symmetric_per_channel_int8(compared):
    """The stem's weight, quantized by PyTorch (int8, per output channel, scale max|w|/127)."""
    model, _, layers = compared
    (stem,) = [layer for layer in layers if layer.group == 'backbone stem']
    weight = model.backbone.downsample_layers[0][0].weight.detach()
    scales = weight.abs().amax(dim=(1, 2, 3)) / 127
    rounded = torch.quantize_per_channel(weight, scales.double(), torch.zeros(len(scales),
                                         dtype=torch.long), 0, torch.qint8).dequantize()
    expected = 20 * math.log10(weight.norm() / (weight - rounded).norm())
    assert stem.weight_db == pytest.approx(expected, abs=0.01)


def test_input_is_the_operators_own_rounding_and_output_the_whole_error(compared):
    """The decode head's inputs lose one rounding each; its outputs carry every layer's."""
    _, _, layers = compared
    head = [layer for layer in layers if layer.group == 'decode_head']
    assert min(layer.input_db for layer in head) > max(layer.output_db for layer in head)


def test_layer_groups_by_node_name():
    assert layer_group('/backbone/downsample_layers.0/downsample_layers.0.0/Conv', 'Conv',
                       False) == 'backbone stem'
    assert layer_group('/backbone/downsample_layers.2/downsample_layers.2.1/Conv', 'Conv',
                       False) == 'backbone downsampling'
    assert layer_group('/backbone/stages.1/stages.1.0/dwconv/Conv', 'Conv',
                       True) == 'backbone depthwise 7x7'
    assert layer_group('/backbone/stages.1/stages.1.0/pwconv2/MatMul', 'MatMul',
                       False) == 'backbone pointwise'
    assert layer_group('/roi_head/bbox_head/shared_fcs.0/Gemm', 'Gemm', False) == 'roi_head'


def test_markdown_has_a_row_per_group_and_the_worst_operators(compared):
    _, _, layers = compared
    text = markdown(str(SEG_DEMO), SHAPE, layers, top=3)
    assert f'at 64x64, {len(layers)} quantized operators' in text
    for group in {layer.group for layer in layers}:
        assert f'| {group} |' in text
    worst = sorted(layers, key=lambda layer: layer.own_db)[:3]
    listed = [line for line in text.splitlines() if line.startswith('| `')]
    assert [line.split('`')[1] for line in listed] == [layer.node for layer in worst]


@pytest.mark.slow
def test_tool_writes_the_tables(tmp_path):
    out = tmp_path / 'sensitivity.md'
    result = run_tool_main('int8_sensitivity', str(SEG_DEMO), '--shape', '64', '64',
                           '--images', '1', '--out', str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.read_text() == result.stdout
    assert '| backbone pointwise |' in result.stdout
