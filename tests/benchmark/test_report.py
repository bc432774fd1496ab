"""The report, on made-up measurements whose table cells and target verdicts follow by hand."""
from __future__ import annotations

from convnext_dense.benchmark.mmpretrain_env import MMPretrainStatus
from convnext_dense.benchmark.report import render_markdown, target_checks
from convnext_dense.benchmark.suite import MemoryRow, Results, Settings, SpeedRow
from convnext_dense.benchmark.whole_models import WholeModelRow


def made_up_results() -> Results:
    settings = Settings(archs=('tiny',), sizes=((224, 224), (800, 1216)),
                        batches={(224, 224): 4}, arch_sizes={},
                        impls=('ours', 'timm', 'official'), modes=('train',),
                        options=('channels_last', 'with_cp'), option_arch='tiny',
                        option_sizes=((224, 224),), memory_sizes=((800, 1216),),
                        profile=False, detector_config=None, whole_models=(), budget_s=15.0,
                        threads=2, device='cpu')
    results = Results(settings, matmul_samples=[50.0, 80.0, 40.0])
    flops = 10 * 10 ** 9
    for variant, seconds in (('ours', 0.5), ('timm', 0.6), ('official', 0.55),
                             ('ours+channels_last', 0.4), ('ours+with_cp', 0.8)):
        results.speed.append(SpeedRow('tiny', (224, 224), 4, 'train', variant, seconds, flops, 7))
    results.memory += [MemoryRow('tiny', (800, 1216), 1, 'ours', 1000.0, 400.0),
                       MemoryRow('tiny', (800, 1216), 1, 'official', 1100.0, 500.0),
                       MemoryRow('tiny', (800, 1216), 1, 'ours+with_cp', 700.0, 100.0)]
    results.wall_s = 90.0
    return results


def test_targets_are_judged_on_the_measured_ratios():
    checks = target_checks(made_up_results())
    assert checks == [
        ('default eager path >= 1.00x timm, every size and mode',
         'min 1.20x (tiny 224x224 train)', True),  # 0.6 / 0.5
        ('default eager path >= 1.05x official, every size and mode',
         'min 1.10x (tiny 224x224 train)', True),  # 0.55 / 0.5
        # best fp32 variant of ours: channels_last, 0.4 s: 0.55 / 0.4 = 1.375; it runs
        # 10 GFLOP / 0.4 s = 25 GFLOP/s, 31 % of the 80 GFLOP/s ceiling; 1.3x the official
        # 18.2 GFLOP/s is 23.6 GFLOP/s, 30 % of it
        ('best fp32 option >= 1.30x official, training, tiny 224x224',
         '1.38x (ours+channels_last: 31% of the matmul ceiling; 1.30x needs 30%)', True),
        ('with_cp peak training memory <= 0.60x without, 800x1216, default malloc',
         '0.70x', False),
        ('with_cp peak training memory <= 0.60x without, 800x1216, freed memory returned',
         '0.25x', True),
    ]


def test_report_tables_hold_the_measurements():
    text = render_markdown(made_up_results(), 'python tools/benchmark.py --made-up', 'a note')
    lines = text.splitlines()
    assert '- Note: a note' in lines
    assert 'python tools/benchmark.py --made-up' in lines
    assert '**Partial report**' in text  # `complete` was never set
    assert '**80 GFLOP/s**, the highest of 3 readings' in text
    assert 'lowest 40)' in text
    # 4 images / 0.5 s; 10 GFLOP / 0.5 s = 20 GFLOP/s = 25 % of 80; timm 4 / 0.6, 0.6 / 0.5
    assert ('| tiny | 224x224 | 4 | train | 7 | 8.00 | 20 (25 %) | 6.67 (1.20x) | '
            '7.27 (1.10x) |') in lines
    assert '| 224x224 | 4 | train | ours+channels_last | 10.00 | 1.25x | 1.38x |' in lines
    assert '| 224x224 | 4 | train | ours+with_cp | 5.00 | 0.62x | 0.69x |' in lines
    assert '| 800x1216 | 1 | official | 1100 | 1.10x | 500 | 1.25x |' in lines
    assert '| 800x1216 | 1 | ours+with_cp | 700 | 0.70x | 100 | 0.25x |' in lines
    assert '| default eager path >= 1.00x timm, every size and mode | min 1.20x ' \
           '(tiny 224x224 train) | yes |' in lines
    assert '| with_cp peak training memory <= 0.60x without, 800x1216, default malloc | ' \
           '0.70x | **no** |' in lines
    assert 'Skipped' not in text


def test_report_says_when_mmpretrain_is_broken():
    results = made_up_results()
    results.mmpretrain = MMPretrainStatus(installed=True, import_error='TypeError: boom')
    results.skipped.append(results.mmpretrain.describe())
    text = render_markdown(results, 'python tools/benchmark.py')
    assert 'Skipped: mmpretrain is installed but fails to import: TypeError: boom' in text
    assert '(fails to import)' in text.split('## Machine')[1].split('Command:')[0]
    assert 'mmpretrain not installed' not in text


def test_mmpretrain_column_target_and_the_whole_models():
    results = made_up_results()
    results.settings.impls = ('ours', 'timm', 'official', 'mmpretrain')
    results.speed.append(SpeedRow('tiny', (224, 224), 4, 'train', 'mmpretrain', 0.45, 10 ** 10, 7))
    results.mmpretrain = MMPretrainStatus(True, version='1.2.0', overlay='/venv/overlays/mmp')
    results.whole += [WholeModelRow('mask_rcnn', (640, 640), 1, 'ours', 8.0, 5),
                      WholeModelRow('mask_rcnn', (640, 640), 1, 'mmpretrain', 8.4, 5),
                      WholeModelRow('upernet', (512, 512), 2, 'ours', 20.0, 5),
                      WholeModelRow('upernet', (512, 512), 2, 'mmpretrain', 19.0, 5)]
    checks = target_checks(results)
    assert ('default eager path >= 1.00x mmpretrain, every size and mode',
            'min 0.90x (tiny 224x224 train)', False) in checks  # 0.45 / 0.5
    assert checks[-2:] == [
        ('whole Mask R-CNN-T training step >= 1.00x the mmpretrain-backbone config, 640x640, '
         'batch 1', '1.05x', True),  # 8.4 / 8.0
        ('whole UperNet-T training step >= 1.00x the mmpretrain-backbone config, 512x512, '
         'batch 2', '0.95x', False)]  # 19 / 20
    text = render_markdown(results, 'cmd')
    lines = text.splitlines()
    assert 'mmpretrain 1.2.0 (overlay /venv/overlays/mmp)' in text.split('## Machine')[1]
    # ours 8.00 img/s; mmpretrain 4 / 0.45 = 8.89 img/s, ours vs 0.45 / 0.5
    assert ('| tiny | 224x224 | 4 | train | 7 | 8.00 | 20 (25 %) | 6.67 (1.20x) | '
            '7.27 (1.10x) | 8.89 (0.90x) |') in lines
    assert "## Whole models: training step, this backbone against mmpretrain's" in lines
    assert ('| Mask R-CNN-T | `configs/mask_rcnn_convnext_t_coco.py` | '
            '`mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py` | 640x640 | '
            '1 | 5 | 8.00 | 8.40 | 1.05x |') in lines
    assert ('| UperNet-T | `configs/upernet_convnext_t_ade20k_512.py` | '
            '`mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py` | 512x512 | '
            '2 | 5 | 20.00 | 19.00 | 0.95x |') in lines
    assert '| whole UperNet-T training step >= 1.00x the mmpretrain-backbone config, 512x512, ' \
           'batch 2 | 0.95x | **no** |' in lines


def test_a_whole_model_measured_with_one_backbone_only_is_left_out():
    results = made_up_results()
    results.whole.append(WholeModelRow('mask_rcnn', (640, 640), 1, 'ours', 8.0, 5))
    assert not any('whole' in target for target, _, _ in target_checks(results))
    assert '## Whole models' not in render_markdown(results, 'cmd')
