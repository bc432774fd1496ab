"""A small, deterministic shapes dataset for the demo and the tests.

Every image is a scene of 2-6 filled shapes (``DEMO_CLASSES``) of random size,
rotation and saturated colour on a low-saturation textured background
(gradient, stripes, blotches and noise). Later shapes occlude earlier ones; the
annotations are the exact *visible* part of each shape. Placement is
rejection-sampled so that every shape in an image keeps a sizeable visible part
(no unlabelled slivers). The class shows in the outline and in the colour: each
class has its own hue family (``CLASS_HUES`` +- ``HUE_JITTER``) while saturation,
brightness and shading vary per object, so that a model trained from scratch
on 2 CPU cores learns the classes within minutes. One renderer
(:func:`render_scene`) makes the scenes; two writers store them, so with the same
seed both layouts hold the same images:

``make_coco_dataset(root)`` (MMDetection, ``CocoDataset``)::

    root/train/000000.jpg ...         root/val/000000.jpg ...
    root/annotations/instances_train.json
    root/annotations/instances_val.json      # category ids 1..K = DEMO_CLASSES
    root/manifest.json

Masks are compressed RLE (``counts`` as str); ``bbox`` (xywh) and ``area`` are
those of the visible mask, ``iscrowd`` is 0.

``make_ade20k_dataset(root)`` (MMSegmentation, ADE20K layout)::

    root/images/training/000000.jpg ...      root/annotations/training/000000.png ...
    root/images/validation/000000.jpg ...    root/annotations/validation/000000.png ...
    root/manifest.json

The PNGs are single-channel uint8: 1 = background, 2..K+1 = ``DEMO_CLASSES``;
0 ("other", ignored with ``reduce_zero_label=True``) never occurs, so every pixel
is labelled and after the reduction the labels are 0 = background,
1..K = ``DEMO_CLASSES``, matching :func:`ade20k_metainfo`. Background is a class
so that mIoU also scores how well the shapes are separated from it.

Why the demo config should not name ``ADE20KDataset`` with custom classes: mmseg
1.2.2's ``BaseSegDataset.get_label_map`` raises ``ValueError`` when
``metainfo['classes']`` differs from the dataset class's ``METAINFO`` and is not
a subset of it, and ADE20K's ``METAINFO`` holds the 150 ADE class names. Plain
``ADE20KDataset`` does load these folders (the labels then carry ADE's first
K+1 names, unused classes evaluate as NaN and are skipped by mIoU), but the
supported way to name our classes is the base class, whose ``METAINFO`` is
empty, with ADE20K's own settings::

    dataset=dict(type='BaseSegDataset', data_root=root, img_suffix='.jpg',
                 seg_map_suffix='.png', reduce_zero_label=True,
                 metainfo=ade20k_metainfo(),
                 data_prefix=dict(img_path='images/training',
                                  seg_map_path='annotations/training'), ...)

Generation is idempotent: ``manifest.json`` records the parameters and the
SHA-256 of every file. A second call with the same parameters returns at once;
files the user added are left alone; a folder that holds other content at any
path the generator would write (or a manifest with other parameters) raises
``FileExistsError`` naming the folder, and nothing is overwritten.
"""
from __future__ import annotations

import colorsys
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Sequence, Tuple, Union

import cv2
import numpy as np
from pycocotools import mask as mask_util

from ..utils import atomic_file, first_n_and_more

DEMO_CLASSES: Tuple[str, ...] = ('circle', 'square', 'triangle', 'star', 'ring')
SEG_CLASSES: Tuple[str, ...] = ('background',) + DEMO_CLASSES
SEG_PALETTE: Tuple[Tuple[int, int, int], ...] = (
    (120, 120, 120), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48),
    (145, 30, 180))

# Bump when the renderer or a writer changes what it produces: folders made by
# another version are then reported as different instead of silently reused.
GENERATOR_VERSION = 2
MANIFEST = 'manifest.json'
JPEG_QUALITY = 95

MIN_OBJECTS, MAX_OBJECTS = 2, 6
#: Hue (0..1) around which each class of DEMO_CLASSES is coloured, and the per-object jitter.
CLASS_HUES: Tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8)
HUE_JITTER = 0.05
RADIUS_RANGE = (0.07, 0.2)  # circumradius as a fraction of min(H, W)
MIN_VISIBLE_AREA = 150  # pixels
MIN_VISIBLE_FRACTION = 0.4  # of the shape's own in-image area
PLACEMENT_TRIES = 30
_SUBPIXEL_SHIFT = 4  # cv2.fillPoly fixed-point bits
_SPLIT_KEYS = {'train': 0, 'val': 1}

PathLike = Union[str, Path]


@dataclass(frozen=True)
class Scene:
    """One rendered image with its instance annotations.

    Attributes:
        image: (H, W, 3) uint8 RGB image.
        masks: (N, H, W) bool visible part of each object, in painting order; disjoint.
        labels: (N,) int64 index of each object's class in ``DEMO_CLASSES``.
    """

    image: np.ndarray
    masks: np.ndarray
    labels: np.ndarray

    def semantic_map(self) -> np.ndarray:
        """(H, W) uint8 map: 0 = background, 1 + label for each object's visible pixels."""
        seg = np.zeros(self.image.shape[:2], np.uint8)
        for mask, label in zip(self.masks, self.labels):
            seg[mask] = label + 1
        return seg


def ade20k_metainfo() -> dict:
    """The ``metainfo`` for the ADE20K-layout folders: background + ``DEMO_CLASSES``."""
    return dict(classes=SEG_CLASSES, palette=[list(color) for color in SEG_PALETTE])


# --- rendering ------------------------------------------------------------------------


def _regular_polygon(num: int, radius: float, angle: float) -> np.ndarray:
    """(num, 2) vertices (x, y) around the origin, circumradius ``radius``."""
    theta = angle + 2 * np.pi * np.arange(num) / num
    return radius * np.stack([np.cos(theta), np.sin(theta)], axis=1)


def _star(radius: float, inner_ratio: float, angle: float) -> np.ndarray:
    """(10, 2) vertices of a five-pointed star, alternating outer and inner points."""
    outer = _regular_polygon(5, radius, angle)
    inner = _regular_polygon(5, radius * inner_ratio, angle + np.pi / 5)
    return np.stack([outer, inner], axis=1).reshape(10, 2)


def _shape_polygons(label: int, radius: float, angle: float,
                    rng: np.random.Generator) -> List[Tuple[np.ndarray, int]]:
    """Polygons (around the origin) and their fill values (1 = in, 0 = hole) for one shape."""
    name = DEMO_CLASSES[label]
    if name == 'circle':
        return [(_regular_polygon(72, radius, 0.0), 1)]
    if name == 'square':
        return [(_regular_polygon(4, radius, angle), 1)]
    if name == 'triangle':
        return [(_regular_polygon(3, radius, angle), 1)]
    if name == 'star':
        return [(_star(radius, rng.uniform(0.42, 0.5), angle), 1)]
    if name == 'ring':
        hole = radius * rng.uniform(0.45, 0.6)
        return [(_regular_polygon(72, radius, 0.0), 1), (_regular_polygon(72, hole, 0.0), 0)]
    raise ValueError(f'label must be in 0..{len(DEMO_CLASSES) - 1}, got {label}')


def _rasterise(polygons: Sequence[Tuple[np.ndarray, int]], centre: np.ndarray,
               size: Tuple[int, int]) -> np.ndarray:
    """(H, W) bool mask of the polygons placed at ``centre`` (x, y), with sub-pixel precision."""
    canvas = np.zeros(size, np.uint8)
    scale = 1 << _SUBPIXEL_SHIFT
    for vertices, value in polygons:
        points = np.round((vertices + centre - 0.5) * scale).astype(np.int32)
        cv2.fillPoly(canvas, [points], int(value), lineType=cv2.LINE_8, shift=_SUBPIXEL_SHIFT)
    return canvas.astype(bool)


def _hsv(rng: np.random.Generator, hue: float, saturation: Tuple[float, float],
         value: Tuple[float, float]) -> np.ndarray:
    rgb = colorsys.hsv_to_rgb(hue % 1.0, rng.uniform(*saturation), rng.uniform(*value))
    return 255.0 * np.array(rgb)


def _linear_ramp(rng: np.random.Generator, size: Tuple[int, int]) -> np.ndarray:
    """(H, W) projection of the pixel grid on a random direction, scaled to 0..1."""
    height, width = size
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    proj = np.cos(angle) * xx + np.sin(angle) * yy
    return (proj - proj.min()) / max(np.ptp(proj), 1e-6)


def _background(rng: np.random.Generator, size: Tuple[int, int]) -> np.ndarray:
    """(H, W, 3) float low-saturation texture: gradient, stripes and blotches."""
    height, width = size
    hue = rng.uniform()
    start = _hsv(rng, hue, (0.0, 0.3), (0.3, 0.85))
    stop = _hsv(rng, hue + rng.uniform(-0.2, 0.2), (0.0, 0.3), (0.3, 0.85))
    ramp = _linear_ramp(rng, size)[..., None]
    image = (1 - ramp) * start + ramp * stop
    period = rng.uniform(8, 40)
    stripes = np.sin(2 * np.pi * _linear_ramp(rng, size) * max(height, width) / period
                     + rng.uniform(0, 2 * np.pi))
    image += rng.uniform(6, 20) * stripes[..., None]
    coarse = rng.normal(0, 1, (rng.integers(3, 7), rng.integers(3, 7), 3)).astype(np.float32)
    image += rng.uniform(5, 20) * cv2.resize(coarse, (width, height),
                                             interpolation=cv2.INTER_CUBIC)
    return image


def _place_object(rng: np.random.Generator, label: int, size: Tuple[int, int],
                  visible: List[np.ndarray], owned: List[int]) -> Union[np.ndarray, None]:
    """Sample a pose for a new object on top; None if none keeps every object visible enough."""
    height, width = size
    for _ in range(PLACEMENT_TRIES):
        radius = min(size) * np.exp(rng.uniform(*np.log(RADIUS_RANGE)))
        angle = rng.uniform(0, 2 * np.pi)
        polygons = _shape_polygons(label, radius, angle, rng)
        margin = 0.6 * radius
        centre = rng.uniform([margin, margin], [width - margin, height - margin])
        mask = _rasterise(polygons, centre, size)
        area = int(mask.sum())
        if area < MIN_VISIBLE_AREA:
            continue
        if all((vis & ~mask).sum() >= max(MIN_VISIBLE_AREA, MIN_VISIBLE_FRACTION * own)
               for vis, own in zip(visible, owned)):
            return mask
    return None


def render_scene(rng: np.random.Generator, image_size: Tuple[int, int]) -> Scene:
    """Render one scene of 2-6 shapes on a textured background.

    Args:
        rng: the only source of randomness; the same state gives the same scene.
        image_size: (height, width) in pixels.
    """
    size = (int(image_size[0]), int(image_size[1]))
    image = _background(rng, size)
    num_objects = int(rng.integers(MIN_OBJECTS, MAX_OBJECTS + 1))
    visible: List[np.ndarray] = []
    owned: List[int] = []
    labels: List[int] = []
    for _ in range(num_objects):
        label = int(rng.integers(len(DEMO_CLASSES)))
        mask = _place_object(rng, label, size, visible, owned)
        if mask is None:
            continue
        # Each class has its own hue family (CLASS_HUES); saturation, brightness and shading
        # vary per object. Before version 2 the class was carried by the outline alone (random
        # hues), which a ConvNeXt trained from scratch did not learn within the demo's minutes.
        color = _hsv(rng, CLASS_HUES[label] + rng.uniform(-HUE_JITTER, HUE_JITTER),
                     (0.55, 1.0), (0.6, 1.0))
        shading = rng.uniform(15, 35) * (_linear_ramp(rng, size) - 0.5)
        image[mask] = color + shading[mask][:, None]
        visible = [vis & ~mask for vis in visible] + [mask]
        owned.append(int(mask.sum()))
        labels.append(label)
    image += rng.normal(0, 4, image.shape)
    masks = np.stack(visible) if visible else np.zeros((0, *size), bool)
    return Scene(image=np.clip(np.round(image), 0, 255).astype(np.uint8), masks=masks,
                 labels=np.array(labels, np.int64))


def _render_split(split: str, num_images: int, image_size: Tuple[int, int],
                  seed: int) -> Iterator[Scene]:
    """Scenes of one split; image i depends only on (seed, split, i), not on the split's size."""
    for index in range(num_images):
        yield render_scene(np.random.default_rng([seed, _SPLIT_KEYS[split], index]), image_size)


# --- writers -------------------------------------------------------------------------


def _encode(ext: str, image: np.ndarray) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if ext == '.jpg' else []
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buffer = cv2.imencode(ext, image, params)
    if not ok:
        raise RuntimeError(f'OpenCV failed to encode a {ext} image')
    return buffer.tobytes()


def _file_name(index: int) -> str:
    return f'{index:06d}'


def _coco_split(split: str, scenes: Iterator[Scene]) -> Tuple[Dict[str, bytes], dict]:
    """JPEGs of one split and its COCO instances dict."""
    files: Dict[str, bytes] = {}
    images, annotations = [], []
    for index, scene in enumerate(scenes):
        name = f'{_file_name(index)}.jpg'
        files[f'{split}/{name}'] = _encode('.jpg', scene.image)
        height, width = scene.image.shape[:2]
        images.append(dict(id=index + 1, file_name=name, height=height, width=width))
        for mask, label in zip(scene.masks, scene.labels):
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(dict(
                id=len(annotations) + 1, image_id=index + 1, category_id=int(label) + 1,
                bbox=[float(v) for v in mask_util.toBbox(rle)], area=int(mask_util.area(rle)),
                iscrowd=0, segmentation=dict(size=[height, width],
                                             counts=rle['counts'].decode('ascii'))))
    coco = dict(
        info=dict(description='convnext_dense demo shapes', version=str(GENERATOR_VERSION)),
        licenses=[], images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(DEMO_CLASSES)])
    return files, coco


def _coco_files(splits: Dict[str, Iterator[Scene]]) -> Dict[str, bytes]:
    files: Dict[str, bytes] = {}
    for split, scenes in splits.items():
        images, coco = _coco_split(split, scenes)
        files.update(images)
        files[f'annotations/instances_{split}.json'] = json.dumps(
            coco, separators=(',', ':')).encode()
    return files


_ADE20K_SPLITS = {'train': 'training', 'val': 'validation'}


def _ade20k_files(splits: Dict[str, Iterator[Scene]]) -> Dict[str, bytes]:
    files: Dict[str, bytes] = {}
    for split, scenes in splits.items():
        folder = _ADE20K_SPLITS[split]
        for index, scene in enumerate(scenes):
            name = _file_name(index)
            files[f'images/{folder}/{name}.jpg'] = _encode('.jpg', scene.image)
            # +1: ADE20K keeps 0 for "other" (ignored after reduce_zero_label).
            files[f'annotations/{folder}/{name}.png'] = _encode('.png', scene.semantic_map() + 1)
    return files


# --- idempotent materialisation ------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest(fmt: str, params: dict, files: Dict[str, bytes]) -> bytes:
    content = dict(generator='convnext_dense.demo_data', version=GENERATOR_VERSION, format=fmt,
                   params=params, files={path: _sha256(files[path]) for path in sorted(files)})
    return (json.dumps(content, indent=1, sort_keys=True) + '\n').encode()


def _check_existing_manifest(root: Path, fmt: str, params: dict) -> bool:
    """True if ``root`` already holds this exact dataset, intact; raise if it holds another."""
    path = root / MANIFEST
    if not path.is_file():
        return False
    try:
        found = json.loads(path.read_text())
        settings = dict(format=found['format'], version=found['version'], **found['params'])
    except (ValueError, KeyError, TypeError) as exc:
        raise FileExistsError(f'{root} has a {MANIFEST} that is not a demo dataset manifest '
                              f'({exc!r}); choose another folder') from exc
    wanted = dict(format=fmt, version=GENERATOR_VERSION, **params)
    if settings != wanted:
        diffs = ', '.join(f'{key}={settings.get(key)!r} (requested {value!r})'
                          for key, value in wanted.items() if settings.get(key) != value)
        raise FileExistsError(f'{root} already holds a demo dataset made with other settings: '
                              f'{diffs}. Choose another folder or remove that one yourself.')
    listed = found.get('files', {})
    return all((root / rel).is_file() and _sha256((root / rel).read_bytes()) == digest
               for rel, digest in listed.items())


def _materialise(root: PathLike, fmt: str, params: dict,
                 build: Callable[[], Dict[str, bytes]]) -> Path:
    """Write the files ``build`` makes under ``root`` unless they are already there."""
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise FileExistsError(f'{root} exists and is not a folder')
    if _check_existing_manifest(root, fmt, params):
        return root
    files = build()
    files[MANIFEST] = _manifest(fmt, params, files)
    conflicts = [rel for rel, data in files.items()
                 if (root / rel).exists() and (root / rel).read_bytes() != data]
    if conflicts:
        shown = first_n_and_more(conflicts, 3)
        raise FileExistsError(f'{root} already holds other content where the demo dataset '
                              f'would be written ({shown}); nothing was overwritten. '
                              'Choose another folder.')
    for rel, data in files.items():  # the manifest comes last: it marks a complete folder
        path = root / rel
        if not path.exists():  # atomic: an interrupted run leaves no half-written file
            with atomic_file(path) as f:
                f.write(data)
    return root


def _check_params(num_train: int, num_val: int, image_size: Sequence[int], seed: int) -> dict:
    for name, value in (('num_train', num_train), ('num_val', num_val)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f'{name} must be a positive int, got {value!r}')
    if (len(image_size) != 2
            or not all(isinstance(v, (int, np.integer)) and v >= 64 for v in image_size)):
        raise ValueError(f'image_size must be (height, width) ints >= 64, got {image_size!r}')
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f'seed must be a non-negative int, got {seed!r}')
    return dict(num_train=int(num_train), num_val=int(num_val),
                image_size=[int(v) for v in image_size], seed=int(seed))


def _make_dataset(fmt: str, writer: Callable[[Dict[str, Iterator[Scene]]], Dict[str, bytes]],
                  root: PathLike, num_train: int, num_val: int, image_size: Sequence[int],
                  seed: int) -> Path:
    params = _check_params(num_train, num_val, image_size, seed)
    size = tuple(params['image_size'])

    def build() -> Dict[str, bytes]:
        return writer({split: _render_split(split, params[f'num_{split}'], size, seed)
                       for split in _SPLIT_KEYS})

    return _materialise(root, fmt, params, build)


def make_coco_dataset(root: PathLike, num_train: int = 200, num_val: int = 50,
                      image_size: Tuple[int, int] = (256, 320), seed: int = 0) -> Path:
    """Write (or find) the demo shapes dataset in COCO instance format under ``root``.

    Args:
        root: target folder; created if missing, never overwritten.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: (height, width) of every image.
        seed: seed of the numpy RNG; the same arguments give byte-identical files.

    Returns:
        ``root`` as a Path.
    """
    return _make_dataset('coco', _coco_files, root, num_train, num_val, image_size, seed)


def make_ade20k_dataset(root: PathLike, num_train: int = 200, num_val: int = 50,
                        image_size: Tuple[int, int] = (256, 320), seed: int = 0) -> Path:
    """Write (or find) the demo shapes dataset in mmseg's ADE20K layout under ``root``.

    Same scenes as :func:`make_coco_dataset` with the same arguments. Load it with
    ``reduce_zero_label=True`` and ``metainfo=ade20k_metainfo()`` (see the module docstring).

    Args:
        root: target folder; created if missing, never overwritten.
        num_train: number of training images.
        num_val: number of validation images.
        image_size: (height, width) of every image.
        seed: seed of the numpy RNG; the same arguments give byte-identical files.

    Returns:
        ``root`` as a Path.
    """
    return _make_dataset('ade20k', _ade20k_files, root, num_train, num_val, image_size, seed)


DATASET_MAKERS: Dict[str, Callable[..., Path]] = dict(coco=make_coco_dataset,
                                                      ade20k=make_ade20k_dataset)
