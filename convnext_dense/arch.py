"""The ConvNeXt family's shapes and the backbone's parameter layout, as plain data.

Both the model (:mod:`convnext_dense.models.backbone`) and the checkpoint
converters (:mod:`convnext_dense.checkpoint`) read this module; it imports
neither, so they never import each other to learn an arch or a key name.
"""
from __future__ import annotations

from collections.abc import Sequence

#: Stage depths and widths: the paper's T/S/B/L/XL, the smaller atto/femto/pico/nano of
#: the later ConvNeXt family and ConvNeXt V2's huge (V2-H).
ARCH_SETTINGS: dict[str, dict[str, tuple[int, ...]]] = {
    'atto': dict(depths=(2, 2, 6, 2), dims=(40, 80, 160, 320)),
    'femto': dict(depths=(2, 2, 6, 2), dims=(48, 96, 192, 384)),
    'pico': dict(depths=(2, 2, 6, 2), dims=(64, 128, 256, 512)),
    'nano': dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640)),
    'tiny': dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768)),
    'small': dict(depths=(3, 3, 27, 3), dims=(96, 192, 384, 768)),
    'base': dict(depths=(3, 3, 27, 3), dims=(128, 256, 512, 1024)),
    'large': dict(depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536)),
    'xlarge': dict(depths=(3, 3, 27, 3), dims=(256, 512, 1024, 2048)),
    'huge': dict(depths=(3, 3, 27, 3), dims=(352, 704, 1408, 2816)),
}

NUM_STAGES = 4
#: Output stride of each stage.
STAGE_STRIDES = (4, 8, 16, 32)
#: Smallest input side of the full backbone (its total stride); a backbone built up to
#: stage ``k`` only needs ``STAGE_STRIDES[k]``.
MIN_INPUT_SIZE = STAGE_STRIDES[-1]
#: Hidden width of every block's MLP relative to its stage width.
MLP_RATIO = 4
#: Kernel sizes: the stem's patchify conv, the downsampling convs, the depthwise convs.
STEM_KERNEL, DOWNSAMPLE_KERNEL, DEPTHWISE_KERNEL = 4, 2, 7


#: Output strides a backbone can be built with: 32 (the paper's), or 16 / 8 with the last
#: one / two stages dilated instead of downsampled (DeepLab-style segmentors).
OUTPUT_STRIDES = (32, 16, 8)


def stage_strides_and_dilations(output_stride: int = 32
                                ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Each stage's output stride, and the dilation of its depthwise convolutions.

    At ``output_stride`` 16 the last stage keeps stride 16 and dilates by 2; at 8 the
    last two keep stride 8 and dilate by 2 and 4: ``(4, 8, 16, 16), (1, 1, 1, 2)`` and
    ``(4, 8, 8, 8), (1, 1, 2, 4)``.
    """
    if isinstance(output_stride, bool) or output_stride not in OUTPUT_STRIDES:
        raise ValueError(f'output_stride must be one of 32, 16, 8, got {output_stride!r}')
    strides = tuple(min(stride, output_stride) for stride in STAGE_STRIDES)
    dilations = tuple(stride // strides[i] for i, stride in enumerate(STAGE_STRIDES))
    return strides, dilations


def resolve_arch(arch: str | None, depths: Sequence[int] | None,
                 dims: Sequence[int] | None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Return ``(depths, dims)`` from an arch name or from explicit values."""
    if (depths is None) != (dims is None):
        raise ValueError('depths and dims must be given together, got '
                         f'depths={depths!r}, dims={dims!r}')
    if depths is not None:
        if arch is not None:
            raise ValueError(f'give either arch or depths/dims, not both (got arch={arch!r})')
        for name, values in (('depths', depths), ('dims', dims)):
            if (not isinstance(values, Sequence) or len(values) != NUM_STAGES
                    or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                               for v in values)):
                raise ValueError(f'{name} must be {NUM_STAGES} positive integers, got {values!r}')
        return tuple(depths), tuple(dims)
    arch = 'tiny' if arch is None else arch
    if arch not in ARCH_SETTINGS:
        raise ValueError(f'arch must be one of {", ".join(ARCH_SETTINGS)} (or None with '
                         f'explicit depths/dims), got {arch!r}')
    return ARCH_SETTINGS[arch]['depths'], ARCH_SETTINGS[arch]['dims']


def arch_name(depths: Sequence[int], dims: Sequence[int]) -> str | None:
    """The arch name with these depths and dims, or None for a custom one."""
    for name, setting in ARCH_SETTINGS.items():
        if setting['depths'] == tuple(depths) and setting['dims'] == tuple(dims):
            return name
    return None


def backbone_state_shapes(depths: Sequence[int], dims: Sequence[int], use_grn: bool = False,
                          layer_scale: bool = True, in_channels: int = 3,
                          out_indices: Sequence[int] = (0, 1, 2, 3)
                          ) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the full backbone (all 4 stages) and its shape.

    The official release's names: ``downsample_layers.{i}.{0,1}``,
    ``stages.{i}.{j}.{dwconv, norm, pwconv1, pwconv2, gamma, grn.gamma, grn.beta}``
    and the per-stage output norms ``norm{i}`` of ``out_indices``.
    """
    shapes: dict[str, tuple[int, ...]] = {
        'downsample_layers.0.0.weight': (dims[0], in_channels, STEM_KERNEL, STEM_KERNEL),
        'downsample_layers.0.0.bias': (dims[0],),
        'downsample_layers.0.1.weight': (dims[0],), 'downsample_layers.0.1.bias': (dims[0],)}
    for i in range(1, NUM_STAGES):
        shapes.update({
            f'downsample_layers.{i}.0.weight': (dims[i - 1],),
            f'downsample_layers.{i}.0.bias': (dims[i - 1],),
            f'downsample_layers.{i}.1.weight': (dims[i], dims[i - 1], DOWNSAMPLE_KERNEL,
                                                DOWNSAMPLE_KERNEL),
            f'downsample_layers.{i}.1.bias': (dims[i],)})
    for i, (depth, dim) in enumerate(zip(depths, dims)):
        hidden = MLP_RATIO * dim
        for j in range(depth):
            block = f'stages.{i}.{j}.'
            if layer_scale:
                shapes[block + 'gamma'] = (dim,)
            shapes.update({
                block + 'dwconv.weight': (dim, 1, DEPTHWISE_KERNEL, DEPTHWISE_KERNEL),
                block + 'dwconv.bias': (dim,),
                block + 'norm.weight': (dim,), block + 'norm.bias': (dim,),
                block + 'pwconv1.weight': (hidden, dim), block + 'pwconv1.bias': (hidden,)})
            if use_grn:
                shapes[block + 'grn.gamma'] = shapes[block + 'grn.beta'] = (1, 1, 1, hidden)
            shapes.update({block + 'pwconv2.weight': (dim, hidden),
                           block + 'pwconv2.bias': (dim,)})
    for i in out_indices:
        shapes[f'norm{i}.weight'] = shapes[f'norm{i}.bias'] = (dims[i],)
    return shapes
