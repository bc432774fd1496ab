"""Which toolbox a config is for: the one small question every apis module asks."""
from __future__ import annotations

from mmengine.config import Config

#: The toolboxes this project's configs run in.
TOOLBOXES = ('mmdet', 'mmseg')


def toolbox_of(cfg: Config) -> str:
    """Return ``'mmdet'`` or ``'mmseg'`` for a config."""
    scope = cfg.get('default_scope')
    if scope in TOOLBOXES:
        return scope
    model_type = str(cfg.get('model', {}).get('type', ''))
    if model_type.startswith(TOOLBOXES):
        return model_type.split('.')[0]
    if 'decode_head' in cfg.get('model', {}):
        return 'mmseg'
    if model_type:
        return 'mmdet'
    raise ValueError(f'{cfg.filename}: cannot tell whether this is an mmdet or mmseg config: '
                     "set default_scope='mmdet' or 'mmseg'")
