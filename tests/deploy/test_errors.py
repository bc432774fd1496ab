"""Bad input to the deploy tools: one named, specific error, and nothing of the user's lost."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mmengine.config import Config

from convnext_dense.apis.models import build_model
from convnext_dense.checkpoint.errors import CheckpointError
from convnext_dense.deploy.export import ExportError, export_onnx, task_of
from convnext_dense.deploy.runtime import ExportedModelMismatch, load_onnx_model, use_onnx_runtime
from tests.conftest import run_tool_main

REPO = Path(__file__).resolve().parents[2]
SEG_DEMO = str(REPO / 'configs/demo/upernet_convnext_demo.py')
DET_DEMO = str(REPO / 'configs/demo/mask_rcnn_convnext_demo.py')


@pytest.fixture(scope='module')
def seg_export(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp('seg')
    torch.manual_seed(0)
    checkpoint = folder / 'seg.pth'
    torch.save({'state_dict': build_model(Config.fromfile(SEG_DEMO)).state_dict()}, checkpoint)
    return export_onnx(SEG_DEMO, str(checkpoint), folder / 'onnx')


def test_shape_must_be_a_multiple_of_32(tmp_path):
    result = run_tool_main('export', SEG_DEMO, 'x.pth', '--out', str(tmp_path / 'o'),
                           '--shape', '100', '128')
    assert result.returncode == 1
    assert '--shape 100 128: height and width must be positive multiples of 32' in result.stderr


def test_unsupported_model_type_names_the_supported():
    cfg = Config(dict(model=dict(type='RetinaNet')))
    with pytest.raises(ExportError, match='cannot export a RetinaNet: supported model types are '
                                          'EncoderDecoder, MaskRCNN, FasterRCNN, CascadeRCNN'):
        task_of(cfg)


def test_query_based_segmentation_head_is_refused_by_name():
    """MaskFormer's head is not exported (Mask2Former's is: test_mask2former.py)."""
    cfg = Config(dict(model=dict(type='EncoderDecoder', decode_head=dict(type='MaskFormerHead'))))
    with pytest.raises(ExportError, match='cannot export a EncoderDecoder with a MaskFormerHead: '
                                          'supported segmentors have a per-pixel decode head'):
        task_of(cfg)
    cfg.model.decode_head.type = 'Mask2FormerHead'
    assert task_of(cfg) == 'segmentation'


def test_checkpoint_of_another_model_names_the_first_keys(tmp_path):
    torch.save({'state_dict': build_model(Config.fromfile(SEG_DEMO)).state_dict()},
               tmp_path / 'seg.pth')
    with pytest.raises(CheckpointError, match=r'does not fit the config\'s model \(MaskRCNN\): '
                                              r'head type: the checkpoint is a segmentor '
                                              r'.*unexpected 82: decode_head\.conv_seg'
                                              r'.*missing 42: neck\.lateral_convs\.0\.conv'):
        export_onnx(DET_DEMO, str(tmp_path / 'seg.pth'), tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_missing_onnx_names_the_extra(tmp_path):
    argv = ['export', SEG_DEMO, 'x.pth', '--out', str(tmp_path / 'o')]
    tool = str(REPO / 'tools' / 'export.py')
    code = (f"import sys; sys.modules['onnx'] = None; sys.argv = {argv!r}; "
            f"import runpy; runpy.run_path({tool!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            cwd=REPO, timeout=300)
    assert result.returncode == 1
    assert "onnx not installed" in result.stderr
    assert "pip install 'convnext_dense[deploy]'" in result.stderr


def test_onnx_of_another_task_is_refused_by_test_and_infer(tmp_path, seg_export):
    from convnext_dense.demo.data import make_coco_dataset
    from convnext_dense.demo.run import data_root_options
    root = make_coco_dataset(tmp_path / 'coco', num_train=1, num_val=1, image_size=(128, 160))
    options = [f'{k}={v}' for k, v in
               data_root_options(Config.fromfile(DET_DEMO), root).items()]
    result = run_tool_main('test', DET_DEMO, str(seg_export), '--work-dir', str(tmp_path),
                           '--cfg-options', *options)
    assert result.returncode == 1
    assert "outputs ['seg_logits']; a detection model exported by tools/export.py" in (
        result.stderr)
    with pytest.raises(ExportedModelMismatch, match=r"inputs \['input'\] and outputs "
                                                    r"\['seg_logits'\]; a detection model"):
        load_onnx_model(Config.fromfile(DET_DEMO), str(seg_export))


def test_onnx_with_other_classes_is_refused(tmp_path, seg_export):
    cfg = Config.fromfile(SEG_DEMO)
    cfg.model.decode_head.num_classes = 7
    with pytest.raises(ExportedModelMismatch, match=r'exported with 6 classes .*deploy\.json\), '
                                                    r"the config's model has 7"):
        load_onnx_model(cfg, str(seg_export))


def test_onnx_with_tta_is_refused(tmp_path, seg_export):
    from convnext_dense.apis.runner import prepare_test_cfg
    with pytest.raises(ValueError, match='an exported model is tested as exported'):
        prepare_test_cfg(SEG_DEMO, str(seg_export), str(tmp_path), tta=True,
                         onnx_runtime=use_onnx_runtime)
