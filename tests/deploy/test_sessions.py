"""The runtimes behind one interface (convnext_dense.deploy.sessions): OpenVINO gives ONNX
Runtime's outputs for the same fp32 and int8 files, the runtime models take ``runtime=``, and
unknown or missing runtimes are named.

One random-weight UperNet demo model (ConvNeXt-atto) is exported once in fp32 for the module;
the int8 file quantizes it (4 random calibration inputs).
"""
from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import mmcv
import numpy as np
import pytest
import torch
from mmengine.config import Config

from convnext_dense.apis.models import build_model
from convnext_dense.apis.runner import load_config
from convnext_dense.demo.data import make_ade20k_dataset
from convnext_dense.demo.run import data_root_options
from convnext_dense.deploy.export import export_onnx
from convnext_dense.deploy.quantize import QuantizationPolicy, quantize_file
from convnext_dense.deploy.runtime import load_onnx_model, use_onnx_runtime
from convnext_dense.deploy.sessions import (
    RUNTIMES,
    OpenVINOSession,
    check_runtime,
    open_runtime_session,
    require_openvino,
    runtime_for,
)
from tests.conftest import relative_error, run_tool_main

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / 'configs/demo/upernet_convnext_demo.py')


class Files(NamedTuple):
    fp32: Path
    int8: Path
    options: dict
    image: Path


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> Files:
    tmp = tmp_path_factory.mktemp('sessions')
    data_root = Path(make_ade20k_dataset(tmp / 'data', num_train=1, num_val=1,
                                         image_size=(64, 96), seed=7))
    options = data_root_options(Config.fromfile(SEG_DEMO), data_root)
    torch.manual_seed(0)
    model = build_model(load_config(SEG_DEMO, options))
    torch.save({'state_dict': model.state_dict()}, tmp / 'seg.pth')
    fp32 = export_onnx(SEG_DEMO, str(tmp / 'seg.pth'), tmp / 'fp32', cfg_options=options)
    generator = np.random.default_rng(1)
    feeds = iter([{'input': generator.normal(size=(1, 3, 64, 96)).astype(np.float32)}
                  for _ in range(4)])
    (tmp / 'int8').mkdir()
    quantize_file(fp32, tmp / 'int8' / 'end2end.onnx', feeds, QuantizationPolicy(depthwise=True))
    (tmp / 'int8' / 'deploy.json').write_text((fp32.parent / 'deploy.json').read_text())
    image = next((data_root / 'images' / 'validation').iterdir())
    return Files(fp32, tmp / 'int8' / 'end2end.onnx', options, image)


def _batch(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(1, 3, height, width)).astype(np.float32)


@pytest.mark.parametrize('precision', ['fp32', 'int8'])
def test_openvino_gives_onnx_runtimes_outputs(files, precision):
    onnx_file = getattr(files, precision)
    ort_session = open_runtime_session(onnx_file, 'onnxruntime', threads=1)
    ov_session = open_runtime_session(onnx_file, 'openvino', threads=1)
    assert ov_session.input_names == ort_session.input_names == ['input']
    assert ov_session.output_names == ort_session.output_names == ['seg_logits']
    for shape in ((64, 96), (96, 64)):  # dynamic height and width
        batch = _batch(*shape)
        expected, = ort_session.run({'input': batch})
        actual, = ov_session.run({'input': batch})
        assert actual.shape == expected.shape and expected.shape[2:] == (shape[0] // 4,
                                                                         shape[1] // 4)
        if precision == 'fp32':  # the same arithmetic up to kernel order
            assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
            assert (actual.argmax(1) == expected.argmax(1)).mean() > 0.999
        else:  # the two runtimes round the requantized activations each their own way, and
            # ONNX Runtime's int8 kernels saturate on x86 CPUs without VNNI: 4.2 % apart
            # there, each 4.5-5.8 % from the fp32 file (docs/deployment.md)
            relative = relative_error(torch.from_numpy(actual), torch.from_numpy(expected))
            assert relative < 0.08, relative
            assert (actual.argmax(1) == expected.argmax(1)).mean() > 0.9


def test_runtime_models_run_openvino(files):
    cfg = load_config(SEG_DEMO, files.options)
    use_onnx_runtime(cfg, str(files.fp32), runtime='openvino')
    assert cfg.model.runtime == 'openvino'
    load = functools.partial(load_onnx_model, runtime='openvino')  # as tools/infer.py passes it
    model = load(load_config(SEG_DEMO, files.options), str(files.fp32))
    assert isinstance(model.session, OpenVINOSession)
    assert model.session.output_names == ['seg_logits']


def test_tools_infer_runs_both_runtimes_alike(files, tmp_path):
    class_maps = {}
    for runtime in RUNTIMES:
        result = run_tool_main('infer', SEG_DEMO, str(files.fp32), str(files.image),
                               '--out-dir', str(tmp_path / runtime), '--runtime', runtime,
                               '--no-progress', '--cfg-options',
                               *[f'{k}={v}' for k, v in files.options.items()])
        assert result.returncode == 0, result.stderr
        maps = list((tmp_path / runtime / 'class_maps').iterdir())
        class_maps[runtime] = mmcv.imread(str(maps[0]), 'unchanged')
    agreement = (class_maps['onnxruntime'] == class_maps['openvino']).mean()
    assert agreement > 0.995


def test_unknown_runtime_is_named():
    with pytest.raises(ValueError, match="--runtime 'tensorrt': unknown runtime; choose one of "
                                         'onnxruntime, openvino'):
        check_runtime('tensorrt')
    with pytest.raises(ValueError, match='unknown runtime'):
        open_runtime_session('x.onnx', 'tensorrt')
    with pytest.raises(SystemExit):  # argparse names the choices
        run_tool_main('test', SEG_DEMO, 'x.onnx', '--runtime', 'tensorrt')


def test_runtime_for_a_pth_is_refused(tmp_path):
    assert runtime_for('a.pth', None) == 'onnxruntime'
    assert runtime_for('a/end2end.onnx', 'openvino') == 'openvino'
    with pytest.raises(ValueError, match='--runtime openvino: runs an exported end2end.onnx; '
                                         'a.pth is not an .onnx'):
        runtime_for('a.pth', 'openvino')
    result = run_tool_main('test', SEG_DEMO, 'a.pth', '--runtime', 'openvino')
    assert result.returncode == 1 and 'is not an .onnx' in result.stderr


def test_missing_openvino_names_the_deploy_extra(monkeypatch, files):
    monkeypatch.setitem(sys.modules, 'openvino', None)  # import openvino raises ImportError
    message = r"openvino not installed: .*pip install 'convnext_dense\[deploy\]'"
    with pytest.raises(ImportError, match=message):
        require_openvino()
    with pytest.raises(ImportError, match=message):
        open_runtime_session(files.fp32, 'openvino')


def test_an_unloadable_file_is_named_by_each_runtime(tmp_path):
    broken = tmp_path / 'end2end.onnx'
    broken.write_bytes(b'not an onnx file')
    for runtime, name in (('onnxruntime', 'ONNX Runtime'), ('openvino', 'OpenVINO')):
        with pytest.raises(ValueError, match=f'{broken}: {name} cannot load it'):
            open_runtime_session(broken, runtime)


#: Two OpenVINO sessions dropped in the order they were made, then a signal with a Python
#: handler (as SIGTERM from `timeout`, or a DataLoader worker's SIGCHLD, arrives): with a
#: ``Core`` per session the CPU plugin left the thread's alternate signal stack on unmapped
#: memory and the process died with a segmentation fault here.
SIGNAL_AFTER_SESSIONS = """
import gc, os, signal, sys, time
from convnext_dense.deploy.sessions import open_runtime_session
first = open_runtime_session(sys.argv[1], 'openvino', threads=1)
second = open_runtime_session(sys.argv[1], 'openvino', threads=1)
del first
gc.collect()
del second
gc.collect()
received = []
signal.signal(signal.SIGTERM, lambda *args: received.append('SIGTERM'))
os.kill(os.getpid(), signal.SIGTERM)
time.sleep(0.1)
print('received', received)
"""


def test_a_signal_after_openvino_sessions_reaches_its_python_handler(files):
    result = subprocess.run([sys.executable, '-c', SIGNAL_AFTER_SESSIONS, str(files.fp32)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "received ['SIGTERM']" in result.stdout
