"""Pre-flight checks of COCO-format annotation files and the images they list.

mmdet reads these files only once the Runner builds the dataloaders, and then fails
without naming the file: ``JSONDecodeError: Expecting value: line 1 column 1 (char 0)``
for a file that is not JSON, ``ValueError: need at least one array to concatenate`` for
one without ``images``. These checks run before the Runner is built and name the file,
what was found and what was expected.
"""
from __future__ import annotations

import json
import os.path as osp

from ..utils import first_n_and_more

#: Keys a COCO instances file must have, and what each holds.
REQUIRED_KEYS = {'images': 'list of {"id", "file_name", ...}',
                 'categories': 'list of {"id", "name"}'}
COCO_FORMAT = ('a COCO instances file: a JSON object with "images", "annotations" and '
               '"categories" lists')


class InvalidAnnotationError(ValueError):
    """An annotation file is not valid JSON or not in COCO format."""


class MissingImageError(FileNotFoundError):
    """An image listed in an annotation file is not on disk."""


def load_coco_annotations(path: str) -> dict:
    """Read a COCO annotation file; raise :class:`InvalidAnnotationError` if it is not one."""
    with open(path, 'rb') as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise InvalidAnnotationError(
            f'annotation file {path!r} is not JSON text (invalid UTF-8 at byte {exc.start}); '
            f'expected {COCO_FORMAT}') from None
    except json.JSONDecodeError as exc:
        ends_early = (exc.pos >= len(exc.doc.rstrip())
                      or exc.msg.startswith('Unterminated string'))
        truncated = ' (the file ends early: truncated?)' if ends_early else ''
        raise InvalidAnnotationError(
            f'annotation file {path!r} is not valid JSON: {exc.msg} at line {exc.lineno} '
            f'column {exc.colno}{truncated}; expected {COCO_FORMAT}') from None
    if not isinstance(data, dict):
        raise InvalidAnnotationError(f'annotation file {path!r} holds a JSON '
                                     f'{type(data).__name__}; expected {COCO_FORMAT}')
    for key, holds in REQUIRED_KEYS.items():
        if not isinstance(data.get(key), list):
            found = 'no such key' if key not in data else f'a {type(data[key]).__name__}'
            raise InvalidAnnotationError(
                f'annotation file {path!r} is not in COCO format: {key!r} should be a {holds}, '
                f'found {found} (top-level keys: {sorted(data)}); expected {COCO_FORMAT}')
    if not isinstance(data.get('annotations', []), list):
        raise InvalidAnnotationError(f'annotation file {path!r}: "annotations" should be a list, '
                                     f'found a {type(data["annotations"]).__name__}')
    for index, image in enumerate(data['images']):
        if not (isinstance(image, dict) and 'id' in image and 'file_name' in image):
            raise InvalidAnnotationError(
                f'annotation file {path!r}: images[{index}] should be an object with "id" and '
                f'"file_name", found {str(image)[:200]}')
    return data


def check_coco_dataset(ann_file: str, image_dir: str, where: str = 'dataset') -> int:
    """Check an annotation file and that every image it lists is in ``image_dir``.

    Returns:
        The number of images listed.

    Raises:
        InvalidAnnotationError: the file is not valid JSON or not COCO.
        MissingImageError: naming the first missing images and the file that lists them.
    """
    try:
        images = load_coco_annotations(ann_file)['images']
    except InvalidAnnotationError as exc:
        raise InvalidAnnotationError(f'{where}: {exc}') from None
    missing = [image['file_name'] for image in images
               if not osp.isfile(osp.join(image_dir, image['file_name']))]
    if missing:
        shown = first_n_and_more([repr(osp.join(image_dir, name)) for name in missing])
        raise MissingImageError(
            f'{where}: {len(missing)} of {len(images)} images listed in {ann_file!r} are not on '
            f'disk: {shown}. Expected each "file_name" under {image_dir!r} '
            '(data_root + data_prefix.img).')
    return len(images)


__all__ = ['InvalidAnnotationError', 'MissingImageError', 'check_coco_dataset',
           'load_coco_annotations']
