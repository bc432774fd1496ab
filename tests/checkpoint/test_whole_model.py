"""Whole detector/segmentor checkpoints: ``tools/convert_checkpoint.py --whole``.

The reference is mmdet's and mmseg's own ConvNeXt models: one subprocess with mmpretrain
importable (:mod:`tests.checkpoint.mmpretrain_overlay`) builds mmdet 3.x's ConvNeXt Mask
R-CNN and mmseg 1.x's ConvNeXt UperNet from the configs their wheels ship (backbone
``mmpretrain.ConvNeXt``), gives them random weights, writes their checkpoints as
mmengine's runner does (weights, meta, message hub, optimizer) and runs mmdet's/mmseg's own
inference on one synthetic image. This process converts the checkpoints with the tool,
loads them into this project's configs' models with the loader ``tools/infer.py`` uses, and
compares the predictions. The other tests use random checkpoints of this project's configs
(the paper's mmdet 2.x / mmseg 0.x release has the same names) and bad input.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from mmengine.runner import load_checkpoint

from convnext_dense.apis.inference import inference_pipeline, load_inference_model
from convnext_dense.apis.models import load_trained_weights
from convnext_dense.apis.runner import load_config
from convnext_dense.apis.whole_checkpoints import build_target_model, check_against_config
from convnext_dense.checkpoint.convert import convert_and_save
from convnext_dense.checkpoint.errors import CheckpointError
from convnext_dense.checkpoint.io import read_checkpoint
from convnext_dense.checkpoint.model_fit import describe_model
from convnext_dense.checkpoint.whole_model import convert_whole_checkpoint, read_whole_checkpoint
from convnext_dense.models.backbone import ConvNeXt
from tests.checkpoint.mmpretrain_overlay import run_with_mmpretrain
from tests.conftest import REPO, randomize_, relative_error, run_tool_main, run_tool_process

DET_CONFIG = str(REPO / 'configs/mask_rcnn_convnext_t_coco.py')
CASCADE_CONFIG = str(REPO / 'configs/cascade_mask_rcnn_convnext_t_coco.py')
SEG_CONFIG = str(REPO / 'configs/upernet_convnext_t_ade20k_512.py')
MMDET_CONFIG = 'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py'
MMSEG_CONFIG = 'mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py'
IMAGE_HW = (256, 320)
#: Test settings for both sides. Random weights score every box low: the class scores are
#: sharpened (CLS_GAIN on fc_cls, part of the weights both sides load) and fewer proposals
#: keep the test fast; detections stay under max_per_img, so none is cut by rank.
DET_TEST_CFG = dict(rpn=dict(nms_pre=200, max_per_img=100),
                    rcnn=dict(score_thr=0.5, max_per_img=100))
CLS_GAIN = 4.0

# Test-time settings: the same code runs in the subprocess (on mmdet's/mmseg's configs) and
# here (on this project's), so both sides see the same image at the same size.
TEST_SETTINGS = r'''
def apply_test_settings(cfg, test_cfg, hw):
    """Set model.test_cfg and keep test images at their size (``hw``)."""
    cfg.merge_from_dict(dict(model=dict(test_cfg=test_cfg)))
    for pipeline in (cfg.test_dataloader.dataset.pipeline, cfg.get('test_pipeline') or []):
        for step in pipeline:
            if step['type'].split('.')[-1] == 'Resize':
                step['scale'] = (hw[1], hw[0])
'''
_settings: dict = {}
exec(TEST_SETTINGS, _settings)
apply_test_settings = _settings['apply_test_settings']

# Runs with mmpretrain importable. argv: output folder, image, json(dict of settings).
REFERENCE_SCRIPT = TEST_SETTINGS + r'''
import json
from pathlib import Path
from mmengine.config import Config
from mmengine.logging import MessageHub
from mmdet.apis import inference_detector, init_detector
from mmseg.apis import inference_model, init_model
from mmseg.datasets import ADE20KDataset

out, image, settings = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])

def packaged_config(base, name, test_cfg):
    path = out / f'{name}_config.py'
    path.write_text(f'_base_ = [{base!r}]\n')
    cfg = Config.fromfile(str(path))
    apply_test_settings(cfg, test_cfg, settings['hw'])
    return cfg

def save_as_runner_does(model, name, dataset_meta):
    hub = MessageHub.get_instance(name)
    hub.update_scalar('train/loss', 1.5)
    torch.save(dict(meta=dict(dataset_meta=dataset_meta, epoch=36, iter=87936,
                              mmengine_version='0.10.7', experiment_name=name),
                    state_dict=model.state_dict(), message_hub=hub.state_dict(),
                    optimizer=torch.optim.SGD(model.parameters(), lr=0.1).state_dict()),
               out / f'{name}.pth')

def check_random_backbone(model):
    assert type(model.backbone).__module__.startswith('mmpretrain'), type(model.backbone)
    gammas = [block.gamma for stage in model.backbone.stages for block in stage]
    assert len(gammas) == 18 and not any((g == 1).any() for g in gammas)  # not at init (1.0)

cfg = packaged_config(settings['mmdet_config'], 'mmdet', settings['det_test_cfg'])
detector = randomize_(init_detector(cfg, None, device='cpu'), seed=1)
with torch.no_grad():
    detector.roi_head.bbox_head.fc_cls.weight.mul_(settings['cls_gain'])
check_random_backbone(detector)
save_as_runner_does(detector, 'mmdet', detector.dataset_meta)
pred = inference_detector(detector, image).pred_instances
det = {k: pred[k] for k in ('bboxes', 'scores', 'labels', 'masks')}

cfg = packaged_config(settings['mmseg_config'], 'mmseg', {})
segmentor = randomize_(init_model(cfg, None, device='cpu'), seed=2)
with torch.no_grad():  # BN weights near 1 (randomize_ makes them small, flattening the maps)
    generator = torch.Generator().manual_seed(3)
    for module in segmentor.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
check_random_backbone(segmentor)
save_as_runner_does(segmentor, 'mmseg', dict(ADE20KDataset.METAINFO))
result = inference_model(segmentor, image)
seg = dict(seg_logits=result.seg_logits.data, pred=result.pred_sem_seg.data)
torch.save(dict(det=det, seg=seg), out / 'predictions.pth')
'''


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_test_image(path: Path, seed: int = 0) -> Path:
    """A synthetic image: noise with filled rectangles and circles."""
    rng = np.random.default_rng(seed)
    height, width = IMAGE_HW
    image = (100 + 60 * rng.random((height, width, 3))).astype(np.uint8)
    for _ in range(6):
        colour = tuple(int(c) for c in rng.integers(0, 255, 3))
        x, y = int(rng.integers(0, width - 60)), int(rng.integers(0, height - 60))
        cv2.rectangle(image, (x, y), (x + int(rng.integers(20, 90)), y + int(rng.integers(20, 90))),
                      colour, -1)
        cv2.circle(image, (int(rng.integers(0, width)), int(rng.integers(0, height))),
                   int(rng.integers(10, 50)), colour[::-1], -1)
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture(scope='module')
def reference(tmp_path_factory) -> dict:
    """mmdet's and mmseg's own ConvNeXt models: checkpoints and predictions on one image."""
    out = tmp_path_factory.mktemp('whole_reference')
    image = write_test_image(out / 'image.png')
    settings = dict(hw=IMAGE_HW, det_test_cfg=DET_TEST_CFG, cls_gain=CLS_GAIN,
                    mmdet_config=MMDET_CONFIG, mmseg_config=MMSEG_CONFIG)
    run_with_mmpretrain(REFERENCE_SCRIPT, str(out), str(image), json.dumps(settings))
    return dict(image=image, det=out / 'mmdet.pth', seg=out / 'mmseg.pth',
                predictions=torch.load(out / 'predictions.pth', weights_only=True))


def predict(config: str, checkpoint: Path, image: Path, test_cfg: dict):
    """This project's config with ``checkpoint``, as tools/infer.py loads and runs it."""
    cfg = load_config(config)
    apply_test_settings(cfg, test_cfg, IMAGE_HW)
    model = load_inference_model(cfg, str(checkpoint))
    data = inference_pipeline(cfg)(dict(img_path=str(image), img_id=0))
    with torch.no_grad():
        return model, model.test_step(pseudo_collate([data]))[0]


def match_detections(reference: dict, actual) -> torch.Tensor:
    """For each reference detection, the index of the same detection in ``actual``."""
    cost = (reference['bboxes'][:, None] - actual.bboxes[None]).abs().amax(-1)
    cost += 1e3 * (reference['scores'][:, None] - actual.scores[None]).abs()
    cost += 1e9 * (reference['labels'][:, None] != actual.labels[None])
    order = cost.argmin(1)
    assert sorted(order.tolist()) == list(range(len(order))), 'detections do not pair up'
    return order


# --- against mmdet's and mmseg's own ConvNeXt models ---------------------------------------


@pytest.mark.slow  # the reference subprocess and two CPU inferences: about 40 s with the seg test
def test_mmdet3_mask_rcnn_gives_mmdets_predictions(reference, tmp_path):
    src, dst = reference['det'], tmp_path / 'mask_rcnn.pth'
    before = sha256(src)
    result = run_tool_process('convert_checkpoint', '--whole', str(src), str(dst),
                              '--config', DET_CONFIG)
    assert result.returncode == 0, result.stderr
    assert sha256(src) == before
    report = result.stdout
    assert 'format:    mmpretrain (mmdet 3.x / mmseg 1.x ConvNeXt configs' in report
    assert 'model:     Mask R-CNN (one box head of 2 shared fcs, mask head)' in report
    assert ('backbone:  186 tensors, 108 renamed: depthwise_conv -> dwconv (36), '
            'pointwise_conv1 -> pwconv1 (36), pointwise_conv2 -> pwconv2 (36)') in report
    assert 'kept:      42 tensors as they are: neck.* (16), rpn_head.* (6), roi_head.* (20)' \
        in report
    assert 'left out:  message_hub, optimizer' in report
    assert f'checked:   every key and shape fits {DET_CONFIG}' in report

    source = read_whole_checkpoint(src)  # weights_only, with mmengine's message hub allowed
    written = torch.load(dst, weights_only=True)  # plain tensors and containers only
    assert written['meta']['dataset_meta'] == source['meta']['dataset_meta']
    record = written['meta']['convnext_dense']
    assert record['whole'] and record['src_format'] == 'mmpretrain' and record['arch'] == 'tiny'
    assert set(written) == {'state_dict', 'meta'}
    for key, value in source['state_dict'].items():  # every tensor arrives, unchanged
        new_key = key.replace('.depthwise_conv.', '.dwconv.').replace('.pointwise_conv', '.pwconv')
        assert torch.equal(written['state_dict'][new_key], value), key
    assert len(written['state_dict']) == len(source['state_dict'])

    model, sample = predict(DET_CONFIG, dst, reference['image'], DET_TEST_CFG)
    expected, actual = reference['predictions']['det'], sample.pred_instances
    assert 10 <= len(expected['scores']) < DET_TEST_CFG['rcnn']['max_per_img']
    assert (expected['scores'] - DET_TEST_CFG['rcnn']['score_thr']).abs().min() > 1e-3
    assert len(actual.scores) == len(expected['scores'])
    order = match_detections(expected, actual)
    assert torch.equal(actual.labels[order], expected['labels'])
    torch.testing.assert_close(actual.scores[order], expected['scores'], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(actual.bboxes[order], expected['bboxes'], rtol=1e-4, atol=1e-3)
    masks, expected_masks = actual.masks[order], expected['masks']
    assert expected_masks.any(dim=(1, 2)).float().mean() > 0.5  # most masks are not empty
    # a pixel whose probability is within float error of mask_thr_binary may flip
    assert (masks != expected_masks).float().mean() < 1e-5

    # mmengine's loader, which load_from= and tools/test.py use, reads it too (strictly)
    weight = model.backbone.stages[2][8].pwconv2.weight
    weight.data.zero_()
    load_checkpoint(model, str(dst), map_location='cpu', strict=True)
    assert torch.equal(weight, written['state_dict']['backbone.stages.2.8.pwconv2.weight'])


@pytest.mark.slow
def test_mmseg1_upernet_gives_mmsegs_predictions(reference, tmp_path):
    # unconverted, it is refused where trained weights are loaded (tools/test.py, infer.py)
    with pytest.raises(CheckpointError, match=r"does not fit the config's model "
                                              r"\(EncoderDecoder\): the backbone has mmpretrain's "
                                              r'names .*: convert it first with '
                                              r'tools/convert_checkpoint.py --whole'):
        load_trained_weights(build_target_model(SEG_CONFIG), reference['seg'])
    dst = tmp_path / 'upernet.pth'
    result = run_tool_main('convert_checkpoint', '--whole', str(reference['seg']), str(dst),
                           '--config', SEG_CONFIG)
    assert result.returncode == 0, result.stderr
    assert 'model:     segmentor (auxiliary_head, decode_head)' in result.stdout
    assert 'renamed: depthwise_conv -> dwconv (36)' in result.stdout
    assert read_checkpoint(dst)['meta']['dataset_meta']['classes'][0] == 'wall'

    _, sample = predict(SEG_CONFIG, dst, reference['image'], {})
    expected = reference['predictions']['seg']
    assert len(expected['pred'].unique()) > 10  # a map with many classes, not one
    assert relative_error(sample.seg_logits.data, expected['seg_logits']) < 1e-5
    assert (sample.pred_sem_seg.data != expected['pred']).float().mean() < 1e-4


# --- the paper's release and this project's own checkpoints --------------------------------


def random_checkpoint(config: str, meta: dict, seed: int = 0) -> dict:
    """A checkpoint with every key and shape of ``config``'s model, random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(v.shape, generator=generator) if v.is_floating_point()
             else torch.zeros(v.shape, dtype=v.dtype)
             for k, v in build_target_model(config).state_dict().items()}
    return dict(state_dict=state, meta=meta)


#: What mmdet 2.x's / mmseg 0.x's (mmcv 1.x's) runner writes into ``meta``.
MMDET2_META = dict(mmdet_version='2.11.0', CLASSES=('person', 'bicycle'), epoch=36, iter=1,
                   config='model = dict(type="CascadeRCNN")', mmcv_version='1.3.0')
MMSEG0_META = dict(CLASSES=('wall', 'building'), PALETTE=[[120, 120, 120], [180, 120, 120]],
                   mmcv_version='1.3.0', iter=160000)


@pytest.fixture(scope='module')
def mask_rcnn_checkpoint() -> dict:
    """This project's Mask R-CNN ConvNeXt-T, as its tools/train.py writes it."""
    return random_checkpoint(DET_CONFIG, dict(dataset_meta=dict(classes=('a',) * 80)))


@pytest.fixture(scope='module')
def upernet_checkpoint() -> dict:
    return random_checkpoint(SEG_CONFIG, MMSEG0_META, seed=1)


@pytest.mark.parametrize('config, meta', [(CASCADE_CONFIG, MMDET2_META),
                                          (SEG_CONFIG, MMSEG0_META)], ids=['cascade', 'upernet'])
def test_paper_release_passes_through_checked(config, meta):
    """mmdet 2.x / mmseg 0.x: the official backbone names and the same neck/head names."""
    checkpoint = random_checkpoint(config, meta)
    checkpoint['optimizer'] = {'state': {}, 'param_groups': [{'lr': 1e-4, 'params': [0]}]}
    backbone_keys = {k[len('backbone.'):] for k in checkpoint['state_dict']
                     if k.startswith('backbone.')}
    assert backbone_keys == set(ConvNeXt(arch='tiny', layer_scale_init_value=1.0).state_dict())
    conversion = convert_whole_checkpoint(checkpoint, 'release.pth')
    check_against_config(conversion, config)
    assert conversion.src_format == 'mmdet/mmseg' and not conversion.renamed
    assert conversion.left_out == ['optimizer'] and conversion.config == config
    assert "none renamed (already this project's layout)" in conversion.report()
    written = conversion.to_checkpoint()
    assert {k: v for k, v in written['meta'].items() if k != 'convnext_dense'} == meta
    assert written['state_dict'].keys() == checkpoint['state_dict'].keys()
    assert all(written['state_dict'][k] is v for k, v in checkpoint['state_dict'].items())


def test_own_checkpoint_round_trip(tmp_path, mask_rcnn_checkpoint):
    """This project's checkpoint, and the tool's own output, pass through unchanged."""
    with_ema = dict(mask_rcnn_checkpoint, ema_state_dict={'steps': torch.tensor(3)})
    src, once = write(tmp_path, with_ema)
    result = run_tool_main('convert_checkpoint', '--whole', src, once, '--config', DET_CONFIG)
    assert result.returncode == 0, result.stderr
    assert 'left out:  ema_state_dict (EMA weights; the main weights are converted)' \
        in result.stdout
    first = read_checkpoint(once)
    assert first['meta']['dataset_meta'] == mask_rcnn_checkpoint['meta']['dataset_meta']
    second = convert_whole_checkpoint(first, once)
    assert second.meta['convnext_dense']['source'] == src  # the earlier record, kept in meta
    assert second.to_checkpoint()['meta']['convnext_dense']['source'] == once
    for key, value in mask_rcnn_checkpoint['state_dict'].items():
        assert torch.equal(first['state_dict'][key], value)
        assert second.state_dict[key] is first['state_dict'][key]


def test_without_config_converts_and_reports(tmp_path, upernet_checkpoint):
    result = run_tool_main('convert_checkpoint', '--whole', *write(tmp_path, upernet_checkpoint))
    assert result.returncode == 0, result.stderr
    assert 'model:     segmentor (auxiliary_head, decode_head)' in result.stdout
    assert 'kept:      ' in result.stdout and 'decode_head.* (' in result.stdout
    assert 'meta:      CLASSES, PALETTE, iter, mmcv_version kept' in result.stdout
    assert 'checked:   backbone only (pass --config CONFIG' in result.stdout


def test_describe_model_names_heads():
    keys = build_target_model(CASCADE_CONFIG).state_dict()
    assert describe_model(keys) == ('Cascade Mask R-CNN (3 box-head stages of 4 shared convs + '
                                    '1 shared fc, mask heads)')
    assert describe_model(['backbone.x', 'bbox_head.retina_cls.weight']) == \
        'one-stage detector (bbox_head)'


# --- refusals ------------------------------------------------------------------------------


def write(tmp_path: Path, checkpoint: dict, name: str = 'src.pth') -> tuple[str, str]:
    src = tmp_path / name
    torch.save(checkpoint, src)
    return str(src), str(tmp_path / f'dst_{name}')


def ten_class_config(tmp_path: Path) -> str:
    config = tmp_path / 'mask_rcnn_10_classes.py'
    config.write_text(f'_base_ = [{DET_CONFIG!r}]\nmodel = dict(roi_head=dict('
                      'bbox_head=dict(num_classes=10), mask_head=dict(num_classes=10)))\n')
    return str(config)


def resnet_config(tmp_path: Path) -> str:
    config = tmp_path / 'mask_rcnn_r50.py'
    config.write_text("_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']\n")
    return str(config)


@pytest.mark.parametrize('case', ['classes', 'cascade', 'segmentor', 'arch', 'resnet'])
def test_heads_that_do_not_fit_the_config_are_named(tmp_path, mask_rcnn_checkpoint,
                                                    upernet_checkpoint, case):
    checkpoint, config, words = {
        'classes': (mask_rcnn_checkpoint, ten_class_config(tmp_path), [
            'number of classes: the config has 10 classes, the checkpoint 80',
            'roi_head.bbox_head.fc_cls.weight: checkpoint (81, 1024) vs config (11, 1024): '
            'the config has 10 classes, the checkpoint 80',
            'roi_head.mask_head.conv_logits.weight: checkpoint (80, 256, 1, 1) vs config '
            '(10, 256, 1, 1)']),
        'cascade': (mask_rcnn_checkpoint, CASCADE_CONFIG, [
            'head type: the checkpoint is a Mask R-CNN (one box head of 2 shared fcs, mask '
            'head), the config a Cascade Mask R-CNN (3 box-head stages of 4 shared convs + 1 '
            'shared fc, mask heads)', 'unexpected 20: roi_head.bbox_head.fc_cls.weight',
            'missing ']),
        'segmentor': (upernet_checkpoint, DET_CONFIG, [
            'head type: the checkpoint is a segmentor (auxiliary_head, decode_head), the '
            'config a Mask R-CNN', 'unexpected ', 'decode_head.']),
        'arch': (mask_rcnn_checkpoint, str(REPO / 'configs/cascade_mask_rcnn_convnext_s_coco.py'),
                 ['backbone arch: the checkpoint has ConvNeXt tiny (depths 3-3-9-3', 'the config '
                  'small (depths 3-3-27-3', 'missing 288: backbone.stages.2.9.']),
        'resnet': (mask_rcnn_checkpoint, resnet_config(tmp_path), [
            "the config a ResNet (not this project's ConvNeXt)",
            'neck.lateral_convs.0.conv.weight: checkpoint (256, 96, 1, 1) vs config (256, 256, '
            '1, 1)', 'unexpected 186: backbone.downsample_layers.0.0.weight']),
    }[case]
    conversion = convert_whole_checkpoint(checkpoint, 'trained.pth')
    with pytest.raises(CheckpointError) as error:
        check_against_config(conversion, config)
    assert f'trained.pth does not fit {config}' in str(error.value)
    for phrase in words:
        assert phrase in str(error.value), (phrase, str(error.value))
    assert conversion.config is None


def test_cli_refuses_a_misfit_and_writes_nothing(tmp_path, mask_rcnn_checkpoint):
    src, dst = write(tmp_path, mask_rcnn_checkpoint)
    config = ten_class_config(tmp_path)
    result = run_tool_main('convert_checkpoint', '--whole', src, dst, '--config', config)
    assert result.returncode == 1
    assert f'error: {src} does not fit {config} (MaskRCNN): number of classes' in result.stderr
    assert not Path(dst).exists()


def official_classifier(backbone: ConvNeXt) -> dict:
    dim = backbone.dims[-1]
    state = {k: v for k, v in backbone.state_dict().items() if not k.startswith('norm')}
    return {'model': {**state, 'norm.weight': torch.ones(dim), 'norm.bias': torch.zeros(dim),
                      'head.weight': torch.zeros(10, dim), 'head.bias': torch.zeros(10)}}


def mmpretrain_classifier(release: dict) -> dict:
    """The release's classifier in mmpretrain's names (``backbone.``, final norm ``norm3``)."""
    state = {}
    for key, value in release['model'].items():
        if not key.startswith('head.'):
            key = 'norm3.' + key[len('norm.'):] if key.startswith('norm.') else key
            key = key.replace('.dwconv.', '.depthwise_conv.').replace('.pwconv', '.pointwise_conv')
            state[f'backbone.{key}'] = value
    return {'state_dict': {**state, 'head.fc.weight': torch.zeros(10, 320),
                           'head.fc.bias': torch.zeros(10)}}


def test_backbone_checkpoints_are_refused_with_a_pointer_to_the_backbone_mode(tmp_path):
    backbone = randomize_(ConvNeXt(arch='atto'))
    release = official_classifier(backbone)
    converted = tmp_path / 'converted_backbone.pth'
    convert_and_save(write(tmp_path, release, 'release.pth')[0], converted)
    cases = {
        'release.pth': (release, 'backbone weights without neck or heads (official layout)'),
        'mmpretrain.pth': (mmpretrain_classifier(release), 'an ImageNet classifier (backbone '
                           'and head only, mmpretrain layout)'),
        'converted.pth': (read_checkpoint(converted), 'backbone weights without neck or heads'),
    }
    for name, (checkpoint, words) in cases.items():
        src, dst = write(tmp_path, checkpoint, name)
        result = run_tool_main('convert_checkpoint', '--whole', src, dst)
        assert result.returncode == 1, name
        assert words in result.stderr, (name, result.stderr)
        assert 'convert backbone weights without --whole' in result.stderr
        assert not Path(dst).exists()
    # the backbone mode still takes them and reports as before
    result = run_tool_main('convert_checkpoint', *write(tmp_path, release, 'again.pth'))
    assert result.returncode == 0 and 'format:    official' in result.stdout


def test_other_models_and_stray_backbone_keys_are_named():
    resnet = {'backbone.layer1.0.conv1.weight': torch.zeros(64, 64, 1, 1),
              'backbone.conv1.weight': torch.zeros(64, 3, 7, 7),
              'neck.lateral_convs.0.conv.weight': torch.zeros(256, 256, 1, 1),
              'roi_head.bbox_head.fc_cls.weight': torch.zeros(81, 1024)}
    with pytest.raises(CheckpointError, match='a whole model whose backbone is a ResNet'):
        convert_whole_checkpoint({'state_dict': resnet}, 'resnet.pth')
    checkpoint = random_checkpoint(DET_CONFIG, {}, seed=1)
    checkpoint['state_dict']['backbone.stages.0.0.extra.weight'] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"'backbone\.stages\.0\.0\.extra\.weight' has no "
                                              'counterpart'):
        convert_whole_checkpoint(checkpoint, 'stray.pth')
    with pytest.raises(CheckpointError, match='src_format for a whole model must be one of '
                                              'mmpretrain, mmdet/mmseg, huggingface-upernet, '
                                              "got 'timm'"):
        convert_whole_checkpoint(checkpoint, 'x.pth', src_format='timm')


def test_dst_is_never_overwritten_and_src_never_modified(tmp_path, mask_rcnn_checkpoint):
    src, dst = write(tmp_path, mask_rcnn_checkpoint)
    before = sha256(Path(src))
    Path(dst).write_bytes(b'precious')
    result = run_tool_main('convert_checkpoint', '--whole', src, dst)
    assert result.returncode == 1 and 'exists; pass --force' in result.stderr
    assert Path(dst).read_bytes() == b'precious'
    result = run_tool_main('convert_checkpoint', '--whole', src, src, '--force')
    assert result.returncode == 1 and 'is the source checkpoint' in result.stderr
    result = run_tool_main('convert_checkpoint', '--whole', src, dst, '--force')
    assert result.returncode == 0, result.stderr
    assert read_checkpoint(dst)['meta']['convnext_dense']['whole']
    assert sha256(Path(src)) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ['dst_src.pth', 'src.pth']


def test_config_and_ema_need_the_right_mode(tmp_path):
    for args in (('a.pth', 'b.pth', '--config', DET_CONFIG), ('a.pth', 'b.pth', '--whole',
                                                             '--ema')):
        with pytest.raises(SystemExit):
            run_tool_main('convert_checkpoint', *args)
    result = run_tool_main('convert_checkpoint', '--whole', str(tmp_path / 'none.pth'),
                           str(tmp_path / 'dst.pth'))
    assert result.returncode == 1 and 'no such file' in result.stderr


def test_a_config_that_cannot_be_built_is_named(tmp_path, mask_rcnn_checkpoint):
    """mmdet's own ConvNeXt config needs mmpretrain: not a target for this project's file."""
    config = tmp_path / 'mmdet_convnext.py'
    config.write_text(f'_base_ = [{MMDET_CONFIG!r}]\n')
    conversion = convert_whole_checkpoint(mask_rcnn_checkpoint, 'trained.pth')
    with pytest.raises(CheckpointError, match=rf"--config {config}: cannot build its model "
                                              r"\(ImportError: .*mmpretrain.*give a config of "
                                              "this project's model"):
        check_against_config(conversion, str(config))
