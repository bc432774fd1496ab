"""The ADE20K configs' --tta against the release's multi-scale + flip test, written out by hand.

The release (mmseg 0.x ``tools/test.py --aug-test`` on the ``_ms`` configs) resizes each image
to fit ``(int(W r), int(H r))`` of the test scale for six ratios r, runs each scale and its
horizontal flip on the whole image, resizes the logits to the input and then to the original
size, flips them back, and averages the softmax scores. ``expected_scores`` does exactly that
with mmcv's ``imrescale`` and torch; the configs' ``tta_model``/``tta_pipeline`` must agree.
"""
from __future__ import annotations

from pathlib import Path

import mmcv
import mmseg.models  # noqa: F401  (registers mmseg's models and transforms)
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.registry import DefaultScope
from mmseg.registry import DATASETS, MODELS

from convnext_dense import SegTTAModelWithTestCfg
from convnext_dense.demo.data import make_ade20k_dataset
from tests.conftest import randomize_

REPO = Path(__file__).resolve().parents[2]
RATIOS = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
# The release's img_norm_cfg (to_rgb=True): ImageNet mean and std of RGB images.
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1)
SMALL_SCALE = (128, 96)  # the test scale for a CPU test (the configs: (2048, 512))


def ade20k_config(tta_scale: tuple[int, int]) -> Config:
    """The shipped ConvNeXt-T UperNet config with an atto backbone and a small slide window."""
    cfg = Config.fromfile(str(REPO / 'configs' / 'upernet_convnext_t_ade20k_512.py'))
    cfg.model.backbone.update(arch='atto', init_cfg=None)
    cfg.model.decode_head.update(in_channels=[40, 80, 160, 320], channels=32)
    cfg.model.auxiliary_head = None
    cfg.model.test_cfg = dict(mode='slide', crop_size=(32, 32), stride=(21, 21))
    for resize in cfg.tta_pipeline[1].transforms[0]:
        ratio = resize.scale[1] / 512
        resize.scale = (int(tta_scale[0] * ratio), int(tta_scale[1] * ratio))
    return cfg


@pytest.fixture(scope='module')
def ade_root(tmp_path_factory) -> Path:
    return make_ade20k_dataset(tmp_path_factory.mktemp('ade'), num_train=1, num_val=1,
                               image_size=(64, 96), seed=3)


def tta_sample(cfg: Config, root: Path) -> dict:
    """The validation image through the config's tta_pipeline, collated: [copy][image]."""
    dataset = dict(cfg.test_dataloader.dataset, data_root=str(root),
                   pipeline=cfg.tta_pipeline)
    with DefaultScope.overwrite_default_scope('mmseg'):
        return pseudo_collate([DATASETS.build(dataset)[0]])


def build_tta(cfg: Config) -> SegTTAModelWithTestCfg:
    tta_cfg = dict(cfg.tta_model, module=cfg.model)
    with DefaultScope.overwrite_default_scope('mmseg'):
        tta = MODELS.build(tta_cfg)
    randomize_(tta.module, seed=0)
    return tta.eval()


def release_runs(segmentor: torch.nn.Module, image_path: str,
                 tta_scale: tuple[int, int]) -> list[torch.Tensor]:
    """The release's 12 aug-test logits, (classes, H, W) each: ratios outer, flips inner."""
    image = mmcv.imread(image_path)  # BGR, as mmcv loads it
    height, width = image.shape[:2]
    runs = []
    for ratio in RATIOS:
        scaled = mmcv.imrescale(image, (int(tta_scale[0] * ratio), int(tta_scale[1] * ratio)))
        for flip in (False, True):
            pixels = scaled[:, ::-1] if flip else scaled
            rgb = torch.from_numpy(pixels[..., ::-1].copy()).permute(2, 0, 1).float()
            inputs = ((rgb - MEAN) / STD)[None]
            with torch.no_grad():
                logits = segmentor.decode_head(segmentor.backbone(inputs))
            logits = F.interpolate(logits, size=inputs.shape[2:], mode='bilinear',
                                   align_corners=False)
            logits = F.interpolate(logits, size=(height, width), mode='bilinear',
                                   align_corners=False)[0]
            runs.append(logits.flip(-1) if flip else logits)
    return runs


def model_runs(tta: torch.nn.Module, sample: dict) -> list[torch.Tensor]:
    """The TTA model's segmentor on each augmented copy: logits at the original size."""
    runs = []
    for inputs, data_samples in zip(sample['inputs'], sample['data_samples']):  # per copy
        with torch.no_grad():
            runs.append(tta.module.test_step(dict(inputs=inputs, data_samples=data_samples))
                        [0].seg_logits.data)
    return runs


def test_shipped_tta_pipelines_resize_as_the_release(ade_root):
    """Shapes at the configs' own scales: each image fits (int(W r), int(H r)), ratio kept."""
    for name, scale in [('upernet_convnext_t_ade20k_512.py', (2048, 512)),
                        ('upernet_convnext_l_in22k_ade20k_640.py', (2560, 640))]:
        cfg = Config.fromfile(str(REPO / 'configs' / name))
        sample = tta_sample(cfg, ade_root)
        shapes = [tuple(inputs[0].shape[1:]) for inputs in sample['inputs']]
        image = mmcv.imread(sample['data_samples'][0][0].img_path)
        expected = [mmcv.imrescale(image, (int(scale[0] * r), int(scale[1] * r))).shape[:2]
                    for r in RATIOS]
        assert shapes == [shape for shape in expected for _ in range(2)]  # each flipped too
        flipped = [samples[0].flip for samples in sample['data_samples']]
        assert flipped == [False, True] * len(RATIOS)
        assert expected[2] == ((512, 768) if scale[1] == 512 else (640, 960))  # 64x96 images


def test_tta_averages_whole_image_runs_as_the_release(ade_root):
    cfg = ade20k_config(SMALL_SCALE)
    tta = build_tta(cfg)
    assert tta.module.test_cfg == dict(mode='whole')
    sample = tta_sample(cfg, ade_root)
    expected = release_runs(tta.module, sample['data_samples'][0][0].img_path, SMALL_SCALE)
    actual = model_runs(tta, sample)
    assert len(actual) == len(expected) == 12
    for ours, release in zip(actual, expected):
        assert ours.shape == release.shape == (150, 64, 96)
        torch.testing.assert_close(ours, release, rtol=1e-4, atol=1e-4)

    scores = torch.stack([run.softmax(dim=0) for run in expected]).mean(dim=0)
    with torch.no_grad():
        predicted = tta.test_step(sample)[0].pred_sem_seg.data[0]
    top2 = scores.topk(2, dim=0).values
    decided = (top2[0] - top2[1]) > 1e-5  # pixels whose winner float noise cannot change
    assert decided.float().mean() > 0.99
    assert torch.equal(predicted[decided], scores.argmax(dim=0)[decided])


def test_mmsegs_tta_with_the_sliding_window_is_not_the_release(ade_root):
    """Control: mmseg's SegTTAModel keeps the model's 32-pixel sliding window."""
    cfg = ade20k_config(SMALL_SCALE)
    cfg.tta_model = dict(type='SegTTAModel')
    tta = build_tta(cfg)
    sample = tta_sample(cfg, ade_root)
    expected = release_runs(tta.module, sample['data_samples'][0][0].img_path, SMALL_SCALE)
    actual = model_runs(tta, sample)
    assert not any(torch.allclose(ours, release, rtol=1e-4, atol=1e-4)
                   for ours, release in zip(actual, expected))


def test_unknown_inference_mode_is_refused():
    cfg = ade20k_config(SMALL_SCALE)
    cfg.tta_model.test_cfg = dict(mode='sliding')
    with pytest.raises(ValueError, match="tta_model.test_cfg.mode must be 'whole' or 'slide', "
                                         "got 'sliding'"):
        build_tta(cfg)
