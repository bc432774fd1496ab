"""The ConvNeXt backbone for dense prediction (detection and segmentation)."""
from __future__ import annotations

import difflib
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from mmengine.model import BaseModule
from timm.layers import trunc_normal_
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..arch import NUM_STAGES, resolve_arch, stage_strides_and_dilations
from ..checkpoint.convert import load_pretrained
from .layers import ConvNeXtBlock, DilatedDownsampleConv2d, LayerNorm2d


def _check_args(in_channels: Any, out_indices: Any, drop_path_rate: Any,
                layer_scale_init_value: Any, frozen_stages: Any) -> tuple[int, ...]:
    """Validate the scalar arguments of :class:`ConvNeXt`; return out_indices as a tuple."""
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f'in_channels must be a positive integer, got {in_channels!r}')
    if isinstance(out_indices, int):
        out_indices = (out_indices,)
    if (not isinstance(out_indices, Sequence) or len(out_indices) == 0
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in out_indices)):
        raise ValueError(f'out_indices must be a non-empty sequence of stage indices 0..3, '
                         f'got {out_indices!r}')
    if not all(0 <= i < NUM_STAGES for i in out_indices):
        raise ValueError(f'out_indices must be a subset of 0..3, got {tuple(out_indices)!r}')
    if len(set(out_indices)) != len(out_indices):
        raise ValueError(f'out_indices must not repeat a stage, got {tuple(out_indices)!r}')
    if not isinstance(drop_path_rate, (int, float)) or not 0 <= drop_path_rate < 1:
        raise ValueError(f'drop_path_rate must be in [0, 1), got {drop_path_rate!r}')
    if not isinstance(layer_scale_init_value, (int, float)) or layer_scale_init_value < 0:
        raise ValueError('layer_scale_init_value must be >= 0 (0 disables layer scale), '
                         f'got {layer_scale_init_value!r}')
    if (isinstance(frozen_stages, bool) or not isinstance(frozen_stages, int)
            or not -1 <= frozen_stages <= NUM_STAGES):
        raise ValueError('frozen_stages must be an integer in -1..4 (-1 or 0: none frozen), '
                         f'got {frozen_stages!r}')
    return tuple(out_indices)


def unknown_arguments_message(cls: type, unknown: dict[str, Any]) -> str:
    """Name each unexpected argument with the closest valid one (config typos)."""
    valid = [name for name in inspect.signature(cls.__init__).parameters
             if name not in ('self', 'unknown')]
    parts = []
    for name in unknown:
        close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
        parts.append(f'{name!r}' + (f' (did you mean {close[0]!r}?)' if close else ''))
    return (f'{cls.__name__} got unexpected argument(s) {", ".join(parts)}; '
            f'valid arguments: {", ".join(valid)}')


class ConvNeXt(BaseModule):
    """ConvNeXt backbone returning per-stage features for necks and decode heads.

    "A ConvNet for the 2020s" (Liu et al., 2022), with ConvNeXt V2's GRN as an
    option. Parameter names match the paper's official release
    (``downsample_layers.{i}.{j}``, ``stages.{i}.{j}.*``, ``norm{i}``).

    Args:
        arch: One of ``atto, femto, pico, nano, tiny, small, base, large,
            xlarge, huge`` (see :data:`convnext_dense.arch.ARCH_SETTINGS`).
            Defaults to ``tiny`` unless ``depths``/``dims`` are given.
        depths: Number of blocks per stage (4 values); use with ``dims`` and
            without ``arch``.
        dims: Channels per stage (4 values).
        in_channels: Channels of the input image.
        out_indices: Stages whose (normalised) outputs are returned, in this
            order. Stage ``i`` has stride ``4 * 2**i``. Stages after the last
            one in ``out_indices`` are not built (see ``num_built_stages``):
            they would only cost compute, and their parameters, which no
            output depends on, would get no gradient (DDP fails on such
            parameters unless ``find_unused_parameters=True``).
        drop_path_rate: Stochastic depth rate of the last block; it increases
            linearly from 0 over all blocks.
        layer_scale_init_value: Initial layer-scale value; 0 disables it.
        frozen_stages: ``k`` in 1..4 freezes the stem/downsampling layers and
            blocks of the first ``k`` stages (no gradients, eval mode, kept
            after ``train()``); -1 or 0 freezes nothing. Stages that are not
            built are never trained anyway, so ``k`` above ``num_built_stages``
            freezes all built stages. The per-stage output norms ``norm{i}``
            are never frozen: they are not part of ImageNet weights and are
            learnt for the dense task.
        with_cp: Use activation checkpointing for every block (less memory,
            more compute, identical results).
        use_grn: Use ConvNeXt V2 blocks (Global Response Normalization);
            V2 checkpoints also need ``layer_scale_init_value=0``.
        output_stride: 32 (the paper's), or 16 / 8 for DeepLab-style heads: the last
            one (16) or two (8) stages keep the resolution instead of halving it, and
            their depthwise convolutions dilate by 2 (and 4) instead. Their downsampling
            convolutions become :class:`~convnext_dense.models.layers.DilatedDownsampleConv2d`
            (stride 1, right/bottom padding). Keys and shapes are those of
            ``output_stride=32``, so every checkpoint loads unchanged, and the stages
            before the first dilated one compute exactly what they did.
        init_cfg: mmengine initialisation config. ``dict(type='Pretrained',
            checkpoint=PATH_OR_URL)`` loads pretrained weights of any layout of
            :mod:`convnext_dense.checkpoint.layouts` (the paper's release, FCMAE,
            DINOv3, Hugging Face files and directories, timm, mmpretrain, this
            package's), converted in memory; the weights of stages that are
            not built are skipped (and logged). Without it, weights get the
            official initialisation (truncated normal, std 0.02).

    Attributes:
        depths, dims: The full arch (4 stages), also when fewer stages are built.
        num_built_stages: ``max(out_indices) + 1``: ``downsample_layers`` and
            ``stages`` hold this many entries, and only they run.
        out_channels: Channels of each returned feature map.
        out_strides: Stride of each returned feature map (16 or 8 at most with
            ``output_stride``).
        dilations: Dilation of each built stage's depthwise convolutions.
        min_input_size: Smallest input height/width: the stride of the last
            built stage.
    """

    def __init__(self, arch: str | None = None, depths: Sequence[int] | None = None,
                 dims: Sequence[int] | None = None, in_channels: int = 3,
                 out_indices: Sequence[int] = (0, 1, 2, 3), drop_path_rate: float = 0.0,
                 layer_scale_init_value: float = 1e-6, frozen_stages: int = 0,
                 with_cp: bool = False, use_grn: bool = False, output_stride: int = 32,
                 init_cfg: dict | list[dict] | None = None, **unknown: Any) -> None:
        if unknown:
            raise TypeError(unknown_arguments_message(type(self), unknown))
        super().__init__(init_cfg=init_cfg)
        self.depths, self.dims = resolve_arch(arch, depths, dims)
        self.arch = arch
        self.out_indices = _check_args(in_channels, out_indices, drop_path_rate,
                                       layer_scale_init_value, frozen_stages)
        self.in_channels = in_channels
        self.frozen_stages = frozen_stages
        self.with_cp = bool(with_cp)
        self.use_grn = bool(use_grn)
        strides, dilations = stage_strides_and_dilations(output_stride)
        self.output_stride = output_stride
        self.out_channels = tuple(self.dims[i] for i in self.out_indices)
        self.out_strides = tuple(strides[i] for i in self.out_indices)
        # Stages after the last returned one are not built: nothing depends on them.
        self.num_built_stages = max(self.out_indices) + 1
        self.dilations = dilations[:self.num_built_stages]
        self.min_input_size = strides[self.num_built_stages - 1]

        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(nn.Sequential(
            nn.Conv2d(in_channels, self.dims[0], kernel_size=4, stride=4),
            LayerNorm2d(self.dims[0])))
        for i in range(1, self.num_built_stages):
            if strides[i] == strides[i - 1]:  # a dilated stage keeps the resolution
                conv = DilatedDownsampleConv2d(self.dims[i - 1], self.dims[i], dilations[i - 1])
            else:
                conv = nn.Conv2d(self.dims[i - 1], self.dims[i], kernel_size=2, stride=2)
            self.downsample_layers.append(nn.Sequential(LayerNorm2d(self.dims[i - 1]), conv))

        # Rates over all blocks of the full arch: a built block keeps the rate it has in
        # the full backbone, whatever out_indices is.
        rates = torch.linspace(0, drop_path_rate, sum(self.depths), device='cpu').tolist()
        self.stages = nn.ModuleList()
        for i, depth in enumerate(self.depths[:self.num_built_stages]):
            first = sum(self.depths[:i])
            self.stages.append(nn.Sequential(*[
                ConvNeXtBlock(self.dims[i], drop_path=rates[first + j],
                              layer_scale_init_value=layer_scale_init_value, use_grn=use_grn,
                              dilation=dilations[i])
                for j in range(depth)]))
        for i in self.out_indices:
            self.add_module(f'norm{i}', LayerNorm2d(self.dims[i]))

        self.apply(self._official_init)
        self._freeze_stages()

    @staticmethod
    def _official_init(module: nn.Module) -> None:
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            trunc_normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def init_weights(self) -> None:
        """Load ``init_cfg``'s pretrained weights (any known layout) or run mmengine's init."""
        cfg = self.init_cfg
        if isinstance(cfg, dict) and cfg.get('type') == 'Pretrained':
            unsupported = set(cfg) - {'type', 'checkpoint', 'map_location', 'prefix'}
            if 'checkpoint' not in cfg or unsupported:
                raise ValueError("init_cfg=dict(type='Pretrained') needs 'checkpoint' and "
                                 f"takes no other keys than map_location/prefix, got {cfg}")
            if cfg.get('prefix') not in (None, 'backbone.'):
                raise ValueError(f"init_cfg prefix {cfg['prefix']!r} is not supported: the "
                                 'checkpoint layout (and its backbone. prefix) is detected')
            load_pretrained(self, cfg['checkpoint'])  # any known layout, converted in memory
            self._is_init = True
            return
        super().init_weights()

    def _freeze_stages(self) -> None:
        # frozen_stages may name stages that are not built: they have nothing to freeze
        for i in range(min(max(self.frozen_stages, 0), self.num_built_stages)):
            for module in (self.downsample_layers[i], self.stages[i]):
                module.eval()
                for param in module.parameters():
                    param.requires_grad = False

    def train(self, mode: bool = True) -> ConvNeXt:
        """Set train/eval mode; frozen stages stay in eval mode."""
        super().train(mode)
        self._freeze_stages()
        return self

    def _check_input(self, x: torch.Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f'ConvNeXt expects an NCHW tensor, got shape {tuple(x.shape)}')
        if x.shape[1] != self.in_channels:
            raise ValueError(f'ConvNeXt was built with in_channels={self.in_channels}, '
                             f'got an input with {x.shape[1]} channels (shape {tuple(x.shape)})')
        size = self.min_input_size
        if min(x.shape[-2:]) < size:
            raise ValueError(f'ConvNeXt needs inputs of at least {size}x{size} (total stride '
                             f'{size} with out_indices={self.out_indices}), '
                             f'got {x.shape[-2]}x{x.shape[-1]}')

    def _run_stage(self, stage: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        if self.with_cp and torch.is_grad_enabled():
            for block in stage:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return stage(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Return the normalised features of ``out_indices`` (NCHW, strides 4..32).

        Only the built stages run (up to ``max(out_indices)``), so every parameter
        takes part in each step and DDP needs no ``find_unused_parameters``.
        """
        self._check_input(x)
        # Channels-last inside: the blocks' permutes to NHWC and back are then free views,
        # and oneDNN's depthwise convolution is faster on it. Outputs are plain NCHW again.
        x = x.contiguous(memory_format=torch.channels_last)
        outs = {}
        for i in range(self.num_built_stages):
            x = self._run_stage(self.stages[i], self.downsample_layers[i](x))
            if i in self.out_indices:
                outs[i] = getattr(self, f'norm{i}')(x)
        return tuple(outs[i].contiguous() for i in self.out_indices)
