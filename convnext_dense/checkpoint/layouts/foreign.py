"""Recognise checkpoints of other model families, to say what a refused file is."""
from __future__ import annotations

from .common import has_key

_PREFIX = r'^(module\.|model\.|backbone\.|encoder\.)?'

#: (family, hint, regexes that must all match some key), most specific first.
_FAMILIES = (
    ('DINOv3 ViT (vision transformer)', "this backbone takes DINOv3's ConvNeXt weights "
     '(dinov3_convnext_{tiny,small,base,large}_*.pth)',
     (_PREFIX + r'storage_tokens$', _PREFIX + r'blocks\.\d+\.attn\.qkv\.')),
    ('ViT (vision transformer)', '',
     (_PREFIX + r'(cls_token|pos_embed)$', _PREFIX + r'blocks\.\d+\.attn\.')),
    ('Hugging Face ViT (vision transformer)', '',
     (r'(^|\.)embeddings\.cls_token$', r'encoder\.layer\.\d+\.attention\.')),
    ('Swin Transformer', '',
     (_PREFIX + r'layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$',)),
    ('ResNet', '', (_PREFIX + r'layer1\.0\.conv1\.weight$',)),
)


def describe_foreign(keys: list[str]) -> str | None:
    """Say which known non-ConvNeXt family the keys belong to (None if none):
    ``'a ResNet, not a ConvNeXt'``, with a hint where one helps."""
    for family, hint, patterns in _FAMILIES:
        if all(has_key(keys, pattern) for pattern in patterns):
            whole = has_key(keys, r'^backbone\.') and has_key(keys, r'^(neck|roi_head|'
                                                                    r'decode_head)\.')
            what = f'a whole model whose backbone is a {family}' if whole else f'a {family}'
            return f'{what}, not a ConvNeXt' + (f': {hint}' if hint else '')
    return None
