"""Recognise checkpoints of other model families, to say what a refused file is."""
from __future__ import annotations

from .common import has_key

_PREFIX = r'^(module\.|model\.|backbone\.|encoder\.)?'

#: (description, regexes that must all match some key), most specific first.
_FAMILIES = (
    ('a DINOv3 ViT (vision transformer); the ConvNeXt backbone takes DINOv3\'s ConvNeXt '
     'weights (dinov3_convnext_{tiny,small,base,large}_*.pth)',
     (_PREFIX + r'storage_tokens$', _PREFIX + r'blocks\.\d+\.attn\.qkv\.')),
    ('a ViT (vision transformer)',
     (_PREFIX + r'(cls_token|pos_embed)$', _PREFIX + r'blocks\.\d+\.attn\.')),
    ('a Hugging Face ViT (vision transformer)',
     (r'(^|\.)embeddings\.cls_token$', r'encoder\.layer\.\d+\.attention\.')),
    ('a Swin Transformer',
     (_PREFIX + r'layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table$',)),
    ('a ResNet', (_PREFIX + r'layer1\.0\.conv1\.weight$',)),
)


def describe_foreign(keys: list[str]) -> str | None:
    """What model family the keys belong to, if it is a known non-ConvNeXt one."""
    for description, patterns in _FAMILIES:
        if all(has_key(keys, pattern) for pattern in patterns):
            whole = has_key(keys, r'^backbone\.') and has_key(keys, r'^(neck|roi_head|'
                                                                    r'decode_head)\.')
            return (f'a whole model whose backbone is {description[2:]}' if whole
                    else description)
    return None
