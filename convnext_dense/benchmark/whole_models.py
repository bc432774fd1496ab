"""Whole models: a training step of Mask R-CNN-T and UperNet-T with this package's backbone
against the same config with mmpretrain's ConvNeXt, the backbone of mmdet's and mmseg's own
ConvNeXt configs.

Each pair (:data:`PAIRS`) is this project's config and that config with only its backbone
replaced by the backbone of the toolbox's own ConvNeXt-T config (read from the installed
toolbox's ``.mim/configs``: ``type='mmpretrain.ConvNeXt', arch='tiny',
out_indices=[0, 1, 2, 3], drop_path_rate=0.4, layer_scale_init_value=1.0,
gap_before_final_norm=False``, its ImageNet ``init_cfg`` left out). Everything else is
shared:

- neck, heads, losses, ``train_cfg`` and data preprocessor: the same config values;
- weights: the mmpretrain-backbone model is initialised (``init_weights``, seeded), and its
  state dict, converted by this package's checkpoint converter
  (:func:`~convnext_dense.checkpoint.whole_model.convert_whole_checkpoint`: only the
  backbone's block names change), is loaded strictly into the model with this backbone;
- data: one synthetic batch made in code (images, and boxes with masks or a segmentation map)
  through the data preprocessor, the same tensors for both;
- the step: ``loss`` forward, backward, and AdamW (lr 1e-4, weight decay 0.05, the recipes'
  values) over all parameters. The configs' layer-decay constructors only give parameters
  their own learning rates, which changes no work in the step, so both use the same plain
  optimizer;
- train mode, drop path 0.4 as both configs set it.

The two steps take turns (:func:`~convnext_dense.benchmark.measure.time_interleaved`), so load
on the machine hits both alike. mmpretrain must be importable in this process
(:mod:`.mmpretrain_env`).
"""
from __future__ import annotations

import copy
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from .measure import time_interleaved

if TYPE_CHECKING:
    from mmengine.config import ConfigDict

Size = tuple[int, int]


@dataclass(frozen=True)
class WholeModelPair:
    """One whole model measured with both backbones."""

    #: short name (command line, report)
    name: str
    #: what it is, in words
    title: str
    #: this project's config
    config: str
    #: the toolbox's own ConvNeXt config whose backbone replaces ours
    reference: str
    #: the recipe's training input (the size to use on a GPU)
    paper_size: Size
    #: images per GPU in the recipe
    paper_batch: int


PAIRS = {
    'mask_rcnn': WholeModelPair(
        'mask_rcnn', 'Mask R-CNN-T', 'configs/mask_rcnn_convnext_t_coco.py',
        'mmdet::convnext/mask-rcnn_convnext-t-p4-w7_fpn_amp-ms-crop-3x_coco.py', (800, 1333), 2),
    'upernet': WholeModelPair(
        'upernet', 'UperNet-T', 'configs/upernet_convnext_t_ade20k_512.py',
        'mmseg::convnext/convnext-tiny_upernet_8xb2-amp-160k_ade20k-512x512.py', (512, 512), 2),
}


def pair_of(name: str) -> WholeModelPair:
    """The pair of ``name``."""
    if name not in PAIRS:
        raise ValueError(f'whole model must be one of {", ".join(PAIRS)}, got {name!r}')
    return PAIRS[name]


def reference_backbone(pair: WholeModelPair) -> dict:
    """The backbone of the toolbox's own config, without its ImageNet ``init_cfg``.

    The config is read without its ``custom_imports`` (which import mmpretrain).
    """
    from mmengine.config import Config
    cfg = Config.fromfile(toolbox_config_file(pair.reference), import_custom_modules=False)
    backbone = cfg.model.backbone.to_dict()
    backbone.pop('init_cfg', None)
    return backbone


def toolbox_config_file(name: str) -> str:
    """The file of ``'mmdet::path'`` / ``'mmseg::path'`` in the installed toolbox (its
    ``.mim/configs``), found without importing the toolbox."""
    import importlib.util
    from pathlib import Path
    toolbox, _, path = name.partition('::')
    spec = importlib.util.find_spec(toolbox)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f'{name}: {toolbox} is not installed')
    file = Path(spec.origin).parent / '.mim' / 'configs' / path
    if not file.is_file():
        raise FileNotFoundError(f'{name}: no {file} in the installed {toolbox}')
    return str(file)


def pair_configs(pair: WholeModelPair, size: Size) -> tuple[str, ConfigDict, ConfigDict]:
    """The toolbox and the two model configs: ours (no pretrained ``init_cfg``), and the same
    with the reference backbone. A segmentor's data preprocessor pads to ``size`` (the
    configs pad to the crop size)."""
    from mmengine.config import ConfigDict

    from ..apis.runner import load_config
    from ..apis.toolbox import toolbox_of
    cfg = load_config(pair.config)
    model = copy.deepcopy(cfg.model)
    model.backbone.pop('init_cfg', None)
    if 'size' in model.get('data_preprocessor', {}):
        model.data_preprocessor.size = tuple(size)
    reference = copy.deepcopy(model)
    reference.backbone = ConfigDict(reference_backbone(pair))
    return toolbox_of(cfg), model, reference


def build_pair(pair: WholeModelPair, size: Size, seed: int = 0,
               overrides: dict | None = None) -> dict[str, nn.Module]:
    """Both models with the same weights, in train mode: ``{'ours': ..., 'mmpretrain': ...}``.

    ``overrides`` are merged into both backbone configs (tests: ``drop_path_rate=0``).
    Needs mmpretrain importable (:func:`~.mmpretrain_env.activate_mmpretrain`).
    """
    from ..apis.models import build_toolbox_model, initialise_weights
    from ..checkpoint.whole_model import convert_whole_checkpoint
    toolbox, ours_cfg, reference_cfg = pair_configs(pair, size)
    for model_cfg in (ours_cfg, reference_cfg):
        model_cfg['backbone'].update(overrides or {})
    reference = build_toolbox_model(toolbox, reference_cfg)
    backbone_module = type(reference.backbone).__module__
    if not backbone_module.startswith('mmpretrain'):
        raise RuntimeError(f'{pair.reference}: its backbone is {backbone_module}, not '
                           "mmpretrain's ConvNeXt")
    torch.manual_seed(seed)
    initialise_weights(reference)
    conversion = convert_whole_checkpoint({'state_dict': reference.state_dict()},
                                          source=f'{pair.title} with mmpretrain.ConvNeXt',
                                          src_format='mmpretrain')
    ours = build_toolbox_model(toolbox, ours_cfg)
    ours.load_state_dict(conversion.state_dict, strict=True)
    return {'ours': ours.train(), 'mmpretrain': _train(reference)}


def _train(model: nn.Module) -> nn.Module:
    model.train()  # mmpretrain's ConvNeXt.train() returns None, so this one is not chained
    return model


def synthetic_batch(pair: WholeModelPair, model: nn.Module, batch: int, size: Size,
                    seed: int = 0) -> dict:
    """One training batch made in code, through ``model``'s data preprocessor.

    Detection: 8 boxes per image (random, 1/16 to 1/2 of the image side) with their
    rectangular masks, random COCO classes. Segmentation: a map of random ADE20K classes on
    a 16x16 grid, each cell a block of pixels.
    """
    gen = torch.Generator().manual_seed(seed)
    height, width = size
    images = [torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=gen)
              for _ in range(batch)]
    meta = dict(img_shape=size, ori_shape=size, pad_shape=size, scale_factor=(1.0, 1.0))
    if pair.name == 'mask_rcnn':
        samples = [_detection_sample(meta, model, gen) for _ in range(batch)]
    else:
        samples = [_segmentation_sample(meta, model, gen) for _ in range(batch)]
    return model.data_preprocessor(dict(inputs=images, data_samples=samples), training=True)


def _detection_sample(meta: dict, model: nn.Module, gen: torch.Generator, boxes: int = 8):
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    height, width = meta['img_shape']
    num_classes = model.roi_head.bbox_head.num_classes
    side = torch.empty(boxes, 2).uniform_(1 / 16, 1 / 2, generator=gen) * torch.tensor(
        [width, height])
    corner = torch.rand(boxes, 2, generator=gen) * (torch.tensor([width, height]) - side)
    bboxes = torch.cat([corner, corner + side], dim=1).floor()
    masks = torch.zeros(boxes, height, width, dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(bboxes.long().tolist()):
        masks[i, y0:y1, x0:x1] = 1
    sample = DetDataSample(metainfo=meta)
    sample.gt_instances = InstanceData(
        bboxes=bboxes, labels=torch.randint(0, num_classes, (boxes,), generator=gen),
        masks=BitmapMasks(masks.numpy(), height, width))
    return sample


def _segmentation_sample(meta: dict, model: nn.Module, gen: torch.Generator, grid: int = 16):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    height, width = meta['img_shape']
    cells = torch.randint(0, model.decode_head.num_classes, (1, 1, grid, grid), generator=gen)
    labels = nn.functional.interpolate(cells.float(), size=(height, width), mode='nearest')
    sample = SegDataSample(metainfo=meta)
    sample.gt_sem_seg = PixelData(data=labels[0].long())
    return sample


def make_train_step(model: nn.Module, data: dict) -> Callable[[], None]:
    """One training step: ``loss`` forward, backward, AdamW step (see the module docstring)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        loss.backward()
        optimizer.step()
    return step


@dataclass
class WholeModelRow:
    """Median seconds per training step of one pair's variant."""

    name: str
    size: Size
    batch: int
    variant: str
    seconds: float
    reps: int

    @property
    def images_per_s(self) -> float:
        return self.batch / self.seconds


def time_pair(pair: WholeModelPair, size: Size, batch: int, warmup: int, reps: int,
              device: torch.device) -> list[WholeModelRow]:
    """Both variants' training steps on the same batch, interleaved; one row each."""
    models = {name: model.to(device) for name, model in build_pair(pair, size).items()}
    data = synthetic_batch(pair, models['ours'], batch, size)
    steps = {name: make_train_step(model, copy.deepcopy(data)) for name, model in models.items()}
    times = time_interleaved(steps, warmup, reps, device)
    return [WholeModelRow(pair.name, size, batch, name, statistics.median(seconds), len(seconds))
            for name, seconds in times.items()]
