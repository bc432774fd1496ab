"""A trained UperNet of this project as a Hugging Face transformers model directory
(``tools/convert_checkpoint.py --to-hf CONFIG CHECKPOINT OUT_DIR``).

The directory holds what ``UperNetForSemanticSegmentation.from_pretrained`` and
``pipeline('image-segmentation', model=OUT_DIR)`` read:

* ``config.json``: a ``UperNetConfig`` with a ``ConvNextConfig`` (V1) or
  ``ConvNextV2Config`` (V2) ``backbone_config``, ``id2label`` from the config's classes,
  ``hidden_size``, ``pool_scales`` and the auxiliary head's settings;
* ``model.safetensors``: every weight (:func:`~convnext_dense.checkpoint.layouts.
  hf_upernet.dense_to_hf_upernet`);
* ``preprocessor_config.json``: transformers' ``SegformerImageProcessor`` (what
  ``AutoImageProcessor`` maps UperNet to) with the ``data_preprocessor``'s mean and std
  (as fractions of 255) and the model's crop size as its resize.

Only safetensors and json write it. The config must be a UperNet that transformers computes
(:func:`~convnext_dense.checkpoint.hf_upernet.settings_of_model`); DeepLabV3+,
Mask2Former, detectors and UperNet variants that differ are refused by name. OUT_DIR is
never overwritten: it is written as a hidden sibling and renamed into place.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmengine.config import Config

from ..checkpoint.errors import CheckpointError
from ..checkpoint.hf_upernet import UperNetSettings, hf_config, settings_of_model, to_hf_state_dict
from ..checkpoint.layouts.hf_upernet import dense_to_hf_upernet
from ..utils import default_file_mode
from .inference import dataset_meta
from .models import build_model, load_trained_weights
from .runner import load_config

#: Models and heads transformers' UperNet mapping does not cover, by their config names.
_NOT_UPERNET = {
    'DepthwiseSeparableASPPHead': 'DeepLabV3+', 'ASPPHead': 'DeepLabV3',
    'Mask2FormerHead': 'Mask2Former', 'MaskFormerHead': 'MaskFormer',
    'MaskRCNN': 'Mask R-CNN', 'CascadeRCNN': 'Cascade (Mask) R-CNN', 'FasterRCNN': 'Faster R-CNN',
    'Mask2Former': 'Mask2Former', 'DINO': 'DINO',
}
#: The image processor transformers' AutoImageProcessor takes for model_type 'upernet'.
IMAGE_PROCESSOR = 'SegformerImageProcessor'
WEIGHTS_FILE = 'model.safetensors'


@dataclass
class HfExport:
    """What :func:`export_to_hf` wrote."""

    config: str
    checkpoint: str
    out_dir: str
    settings: UperNetSettings
    labels: list[str]
    preprocessor: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    def report(self) -> str:
        """A short human-readable summary."""
        s = self.settings
        aux = s.auxiliary
        size = self.preprocessor['size']
        lines = [
            f'config:    {self.config}',
            f'weights:   {self.checkpoint}',
            f'model:     UperNetForSemanticSegmentation, '
            f'{"ConvNextV2" if s.arch.use_grn else "ConvNext"} backbone {s.arch}',
            f'heads:     UperNet hidden_size {s.hidden_size}, pool scales {s.pool_scales}, '
            f'{s.num_labels} labels; ' + (
                f'auxiliary FCN head ({aux.num_convs} conv(s) of {aux.channels}, '
                f'concat_input={aux.concat_input})' if aux else 'no auxiliary head'),
            f'processor: {IMAGE_PROCESSOR}, mean {self.preprocessor["image_mean"]}, std '
            f'{self.preprocessor["image_std"]} (of 1.0), resize to {size["height"]}x'
            f'{size["width"]}',
            *[f'note:      {note}' for note in self.notes],
            f'written:   {self.out_dir} (config.json, {WEIGHTS_FILE}, '
            'preprocessor_config.json)',
        ]
        return '\n'.join(lines)


def refuse_unmappable(cfg: Config, name: str) -> None:
    """Refuse, before building anything, a config that is not a UperNet segmentor."""
    model = cfg.get('model') or {}
    decode = model.get('decode_head') or {}
    for type_name in (model.get('type'), decode.get('type') if isinstance(decode, dict) else None):
        short = str(type_name).split('.')[-1]
        if short in _NOT_UPERNET:
            raise CheckpointError(
                f'{name}: a {_NOT_UPERNET[short]} model ({short}); transformers\' '
                'UperNetForSemanticSegmentation maps UperNet segmentors only')


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """Refuse an ``OUT_DIR`` that exists and is not an empty directory."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f'{out}: exists and is not an empty directory; OUT_DIR is never '
                              'overwritten, choose another')
    return out


def image_processor_config(cfg: Config, name: str) -> tuple[dict[str, Any], list[str]]:
    """``preprocessor_config.json`` for the config's input normalisation, and notes on what
    transformers' processor does otherwise than this project's test."""
    pre = cfg.model.get('data_preprocessor') or {}
    if not pre.get('bgr_to_rgb', False) or pre.get('rgb_to_bgr', False):
        raise CheckpointError(
            f'{name}: model.data_preprocessor feeds the model BGR images (bgr_to_rgb is not '
            'set); transformers\' image processors pass RGB')
    crop = pre.get('size') or (cfg.model.get('test_cfg') or {}).get('crop_size')
    if not crop:
        raise CheckpointError(f'{name}: neither model.data_preprocessor.size nor '
                              'model.test_cfg.crop_size names the input size for the '
                              "processor's resize")
    mean, std = pre.get('mean'), pre.get('std')
    config: dict[str, Any] = dict(
        image_processor_type=IMAGE_PROCESSOR, do_resize=True,
        size=dict(height=int(crop[0]), width=int(crop[1])), resample=2,  # bilinear
        do_rescale=True, rescale_factor=1 / 255, do_normalize=mean is not None,
        do_reduce_labels=False)
    if mean is not None:
        config.update(image_mean=[float(m) / 255 for m in mean],
                      image_std=[float(s) / 255 for s in std])
    notes = []
    test_cfg = cfg.model.get('test_cfg') or {}
    resize = next((step for step in cfg.test_dataloader.dataset.pipeline
                   if str(step.get('type', '')).split('.')[-1] == 'Resize'), None)
    if resize is not None or test_cfg.get('mode') == 'slide':
        notes.append(
            f'{IMAGE_PROCESSOR} resizes every image to {crop[0]}x{crop[1]}; the config tests '
            + (f'after a resize to scale {tuple(resize["scale"])} keep_ratio='
               f'{resize.get("keep_ratio", False)}' if resize is not None else 'at full size')
            + (f' with {test_cfg["crop_size"]} windows (stride {test_cfg.get("stride")})'
               if test_cfg.get('mode') == 'slide' else '')
            + ': transformers\' predictions are of the same model at another input size')
    return config, notes


def _labels(cfg: Config, name: str, num_labels: int) -> list[str]:
    classes = [str(c) for c in dataset_meta(cfg).get('classes') or ()]
    if len(classes) != num_labels:
        raise CheckpointError(
            f'{name}: the test dataset names {len(classes)} classes, the decode head has '
            f'{num_labels}; set test_dataloader.dataset.metainfo.classes to its classes')
    return classes


def _publish(out: Path, files: dict[str, Any]) -> None:
    """Write ``files`` into a new hidden sibling of ``out``, then rename it to ``out``."""
    from safetensors.torch import save_file
    out.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(prefix=f'.{out.name}.', suffix='.staged', dir=out.parent))
    try:
        for file_name, content in files.items():
            if file_name == WEIGHTS_FILE:
                save_file(content, str(staged / file_name), metadata={'format': 'pt'})
            else:
                (staged / file_name).write_text(json.dumps(content, indent=2) + '\n')
        os.chmod(staged, default_file_mode(directory=True))
        try:
            os.rename(staged, out)  # onto nothing or an empty directory only
        except OSError as exc:
            raise FileExistsError(f'{out}: came into being while writing ({exc}); OUT_DIR is '
                                  'never overwritten') from None
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # this call's own files only
        raise


def export_to_hf(config: str | os.PathLike | Config, checkpoint: str | os.PathLike,
                 out_dir: str | os.PathLike) -> HfExport:
    """Write ``config``'s UperNet (a config file or a loaded config) with ``checkpoint``'s
    weights as a transformers directory.

    Raises:
        CheckpointError: the config is not a UperNet transformers computes (named), the
            weights do not fit it, or its classes do not match its head.
        FileExistsError: ``out_dir`` exists and is not empty.
    """
    out = check_out_dir(out_dir)
    name = str(getattr(config, 'filename', None) or config)
    cfg = config if isinstance(config, Config) else load_config(name)
    refuse_unmappable(cfg, name)
    model = build_model(cfg)
    settings = settings_of_model(model, name)
    preprocessor, notes = image_processor_config(cfg, name)
    labels = _labels(cfg, name, settings.num_labels)
    load_trained_weights(model, checkpoint)
    aux_loss = ((cfg.model.get('auxiliary_head') or {}).get('loss_decode') or {})
    files = {
        'config.json': hf_config(settings, labels,
                                 float(aux_loss.get('loss_weight', 0.4))
                                 if isinstance(aux_loss, dict) else 0.4,
                                 int(model.decode_head.ignore_index)),
        WEIGHTS_FILE: to_hf_state_dict(dense_to_hf_upernet(model.state_dict())),
        'preprocessor_config.json': preprocessor,
    }
    _publish(out, files)
    return HfExport(name, str(checkpoint), str(out), settings, labels, preprocessor, notes)
