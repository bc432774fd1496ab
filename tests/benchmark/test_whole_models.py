"""The whole-model comparison: the two configs of each pair, the synthetic batches, the step,
and (with mmpretrain, in a subprocess) both models built with the same heads and weights."""
from __future__ import annotations

import json

import pytest
import torch
from mmengine.config import ConfigDict

from convnext_dense.apis.models import build_toolbox_model
from convnext_dense.benchmark.whole_models import (
    PAIRS,
    make_train_step,
    pair_configs,
    reference_backbone,
    synthetic_batch,
)
from tests.checkpoint.mmpretrain_overlay import run_with_mmpretrain

#: The backbone of mmdet's configs/convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py
#: and mmseg's configs/convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py.
MMPRETRAIN_T = dict(type='mmpretrain.ConvNeXt', arch='tiny', out_indices=[0, 1, 2, 3],
                    drop_path_rate=0.4, layer_scale_init_value=1.0, gap_before_final_norm=False)


@pytest.mark.parametrize('name', sorted(PAIRS))
def test_the_reference_backbone_is_the_toolboxs_own(name):
    assert reference_backbone(PAIRS[name]) == MMPRETRAIN_T


@pytest.mark.parametrize('name', sorted(PAIRS))
def test_the_two_configs_differ_in_the_backbone_only(name):
    toolbox, ours, reference = pair_configs(PAIRS[name], (256, 320))
    assert toolbox == ('mmdet' if name == 'mask_rcnn' else 'mmseg')
    assert isinstance(ours, ConfigDict) and isinstance(reference, ConfigDict)
    assert reference.backbone == MMPRETRAIN_T
    backbone = ours.backbone
    assert backbone.type.split('.')[-1] == 'ConvNeXt' and 'init_cfg' not in backbone
    assert (backbone.arch, list(backbone.out_indices), backbone.drop_path_rate,
            backbone.layer_scale_init_value) == ('tiny', [0, 1, 2, 3], 0.4, 1.0)
    rest = {k: v for k, v in ours.items() if k != 'backbone'}
    assert rest == {k: v for k, v in reference.items() if k != 'backbone'}
    if name == 'upernet':  # the segmentor pads to the measured size, not the crop size
        assert tuple(ours.data_preprocessor.size) == (256, 320)


def _ours(name: str, size: tuple[int, int]) -> torch.nn.Module:
    toolbox, ours, _ = pair_configs(PAIRS[name], size)
    torch.manual_seed(0)
    return build_toolbox_model(toolbox, ours).train()


def test_detection_batch_and_training_step():
    pair = PAIRS['mask_rcnn']
    model = _ours('mask_rcnn', (128, 160))
    data = synthetic_batch(pair, model, 2, (128, 160))
    assert data['inputs'].shape == (2, 3, 128, 160)
    for sample in data['data_samples']:
        gt = sample.gt_instances
        boxes = gt.bboxes.tensor if hasattr(gt.bboxes, 'tensor') else gt.bboxes
        assert boxes.shape == (8, 4) and len(gt.labels) == 8 and gt.labels.max() < 80
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 160).all() and \
            (boxes[:, 3] <= 128).all()
        assert (widths >= 160 // 16).all() and (heights >= 128 // 16).all()
        # each mask fills its box exactly
        assert gt.masks.masks.sum(axis=(1, 2)).tolist() == (widths * heights).int().tolist()
    again = synthetic_batch(pair, model, 2, (128, 160))
    assert torch.equal(again['inputs'], data['inputs'])  # seeded
    before = model.roi_head.mask_head.conv_logits.weight.detach().clone()
    make_train_step(model, data)()
    assert not torch.equal(model.roi_head.mask_head.conv_logits.weight, before)


def test_segmentation_batch():
    pair = PAIRS['upernet']
    model = _ours('upernet', (64, 96))
    data = synthetic_batch(pair, model, 2, (64, 96))
    assert data['inputs'].shape == (2, 3, 64, 96)
    for sample in data['data_samples']:
        labels = sample.gt_sem_seg.data
        assert labels.shape == (1, 64, 96) and labels.max() < 150
        # a 16x16 grid of blocks: constant inside each 4x6 block
        blocks = labels[0].reshape(16, 4, 16, 6)
        assert (blocks == blocks[:, :1, :, :1]).all()


# Runs with mmpretrain importable (tests/checkpoint/mmpretrain_overlay.py). argv: json(sizes).
PAIR_SCRIPT = r'''
import json
from convnext_dense.benchmark.whole_models import (PAIRS, build_pair, synthetic_batch,
                                                    time_pair)
found = {}
for name, (size, batch) in json.loads(sys.argv[1]).items():
    pair, size = PAIRS[name], tuple(size)
    models = build_pair(pair, size, overrides=dict(drop_path_rate=0.0))
    ours, theirs = models['ours'], models['mmpretrain']
    shapes = [{k: list(v.shape) for k, v in m.state_dict().items()
               if not k.startswith('backbone.')} for m in (ours, theirs)]
    data = synthetic_batch(pair, ours, batch, size)
    for model in models.values():
        model.eval()
    with torch.no_grad():
        features = [m.backbone(data['inputs']) for m in (ours, theirs)]
    errors = [((a - b).norm() / b.norm()).item() for a, b in zip(*features)]
    losses = []
    for model in (ours, theirs):  # train mode: same sampling with the same seed
        model.train()
        torch.manual_seed(0)
        with torch.no_grad():
            losses.append({k: float(sum(v) if isinstance(v, list) else v)
                           for k, v in model(**data, mode='loss').items()})
    rows = time_pair(pair, size, batch, warmup=0, reps=1, device=torch.device('cpu'))
    found[name] = dict(
        types=[type(m.backbone).__module__ for m in (ours, theirs)],
        heads_equal=shapes[0] == shapes[1], heads=len(shapes[0]), errors=errors,
        losses=losses, rows=[(r.variant, r.size, r.batch, r.reps) for r in rows])
print(json.dumps(found))
'''


@pytest.mark.slow
def test_both_models_have_the_same_heads_weights_and_losses():
    sizes = {'mask_rcnn': ((128, 160), 1), 'upernet': ((64, 64), 2)}
    found = json.loads(run_with_mmpretrain(PAIR_SCRIPT, json.dumps(sizes)).strip()
                       .splitlines()[-1])
    for name, result in found.items():
        ours, theirs = result['types']
        assert ours.startswith('convnext_dense') and theirs.startswith('mmpretrain'), name
        assert result['heads_equal'] and result['heads'] > 20, name
        # the same converted weights: the same features, then the same losses
        assert max(result['errors']) < 1e-5, (name, result['errors'])
        mine, reference = result['losses']
        assert mine.keys() == reference.keys() and mine, name
        for key in mine:
            assert mine[key] == pytest.approx(reference[key], rel=1e-3, abs=1e-5), (name, key)
        (size, batch), = [sizes[name]]
        assert result['rows'] == [['ours', list(size), batch, 1],
                                  ['mmpretrain', list(size), batch, 1]], name
