"""A small, learnable demo dataset in the exact on-disk formats of COCO
instances, ADE20K and ImageNet, so that the real configs' pipelines read it.

Every image shows a few large, saturated shapes (circle, square, triangle) on a
muted crop of one of scikit-image's photographs. The class is carried by the
shape and, to keep a CPU demo short, also by a hue per class (jittered). The
same polygon draws the pixels and is written as the annotation, so masks,
boxes and label maps agree exactly.

Layouts written under ``root`` (those docs/user_guides/dataset_prepare.md documents)::

    coco/annotations/instances_{train,val}2017.json   polygons, area, bbox, iscrowd
    coco/{train,val}2017/000000000001.jpg
    ade/ADEChallengeData2016/images/{training,validation}/ADE_{train,val}_00000001.jpg
    ade/ADEChallengeData2016/annotations/{training,validation}/ADE_..._00000001.png
    imagenet/train/<wnid>/<wnid>_1.JPEG, imagenet/val/ILSVRC2012_val_00000001.JPEG
    imagenet/meta/{train,val}.txt                      "<path> <label>" per line
"""
import json
import os
import os.path as osp
import shutil
from importlib.util import find_spec
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mmengine.logging import MMLogger
from PIL import Image, ImageDraw

#: Shape categories of every demo task, in label order.
CATEGORIES: Tuple[str, ...] = ('circle', 'square', 'triangle')
#: Base colour (RGB) of each category; each shape jitters it.
CATEGORY_COLOURS: Dict[str, Tuple[int, int, int]] = {
    'circle': (230, 40, 40), 'square': (40, 210, 60), 'triangle': (60, 90, 240)}

#: ADE20K classes the segmentation demo uses, with their 1-based ids in the
#: 150-class label convention (0 = "other", ignored with reduce_zero_label).
#: The textured background is a photograph, hence 'painting'.
#: tests/test_demo_data.py checks these ids against mmseg's ADE20KDataset.
ADE_CLASSES: Dict[str, Tuple[str, int]] = {
    'background': ('painting', 23), 'circle': ('ball', 120),
    'square': ('box', 42), 'triangle': ('flag', 150)}
#: Class names of the segmentation demo, in the order of the reduced labels.
ADE_DEMO_CLASSES: Tuple[str, ...] = tuple(
    name for name, _ in sorted(ADE_CLASSES.values(), key=lambda item: item[1]))

#: Class folder names of the classification demo (ImageNet-style WordNet ids;
#: the 'n9...' range is not used by ImageNet).
IMAGENET_WNIDS: Dict[str, str] = {
    'circle': 'n90000001', 'square': 'n90000002', 'triangle': 'n90000003'}

#: Images per split when not given: (train, val).
DEFAULT_NUM_IMAGES: Dict[str, Tuple[int, int]] = {
    'coco': (192, 48), 'ade': (96, 24), 'imagenet': (96, 24)}
TASKS: Tuple[str, ...] = ('coco', 'ade', 'imagenet')
#: Sub-folder of ``root`` per task (the parent folder the real configs expect).
TASK_DIRS: Dict[str, str] = {
    'coco': 'coco', 'ade': osp.join('ade', 'ADEChallengeData2016'), 'imagenet': 'imagenet'}

_STAMP = '.fec_demo_data.json'
_FORMAT_VERSION = 1
_PHOTOS = ('astronaut.png', 'coffee.png', 'chelsea.png', 'rocket.jpg', 'motorcycle_left.png')


# ----------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------
def _photo_dir() -> str:
    spec = find_spec('skimage')
    if spec is None or not spec.submodule_search_locations:
        raise ImportError('make_demo_data needs scikit-image (its photographs are the '
                          'textured backgrounds); install the requirements.txt packages')
    return osp.join(list(spec.submodule_search_locations)[0], 'data')


class _Renderer:
    """Draws shapes on textured backgrounds with a seeded generator."""

    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        photo_dir = _photo_dir()
        paths = [osp.join(photo_dir, name) for name in _PHOTOS
                 if osp.isfile(osp.join(photo_dir, name))]
        if not paths:
            raise FileNotFoundError(f'no background photograph of {_PHOTOS} in {photo_dir}')
        self.photos = [np.asarray(Image.open(p).convert('RGB'), dtype=np.float32)
                       for p in paths]

    def background(self, width: int, height: int) -> Image.Image:
        """A random crop of a photograph, desaturated and low in contrast so
        that the shapes stand out."""
        photo = self.photos[self.rng.integers(len(self.photos))]
        ph, pw = photo.shape[:2]
        scale = self.rng.uniform(0.25, 0.8)
        cw, ch = max(int(pw * scale), width), max(int(ph * scale), height)
        cw, ch = min(cw, pw), min(ch, ph)
        x0, y0 = self.rng.integers(0, pw - cw + 1), self.rng.integers(0, ph - ch + 1)
        crop = Image.fromarray(photo[y0:y0 + ch, x0:x0 + cw].astype(np.uint8))
        crop = np.asarray(crop.resize((width, height), Image.BILINEAR), dtype=np.float32)
        grey = crop.mean(axis=2, keepdims=True)
        muted = 0.7 * grey + 0.3 * crop
        muted = 0.5 * (muted - muted.mean()) + 110.0
        return Image.fromarray(np.clip(muted, 0, 255).astype(np.uint8))

    def polygon(self, category: str, cx: float, cy: float, radius: float) -> np.ndarray:
        """Vertices (K, 2) of a shape of circumradius ``radius``, randomly rotated."""
        sides = {'circle': 32, 'square': 4, 'triangle': 3}[category]
        angles = self.rng.uniform(0, 2 * np.pi) + np.arange(sides) * 2 * np.pi / sides
        return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)

    def colour(self, category: str) -> Tuple[int, int, int]:
        base = np.array(CATEGORY_COLOURS[category]) + self.rng.integers(-25, 26, size=3)
        return tuple(int(c) for c in np.clip(base, 0, 255))

    def scene(self, width: int, height: int, num_objects: Tuple[int, int],
              radius: Tuple[float, float]) -> Tuple[Image.Image, List[dict]]:
        """An image with non-overlapping shapes.

        Returns:
            tuple: the RGB image and one dict per shape with ``category``,
            ``polygon`` (K, 2) and ``mask`` (H, W) bool, in drawing order.
        """
        image = self.background(width, height)
        draw = ImageDraw.Draw(image)
        objects: List[dict] = []
        boxes: List[Tuple[float, float, float, float]] = []
        wanted = int(self.rng.integers(num_objects[0], num_objects[1] + 1))
        for _ in range(50 * wanted):
            if len(objects) == wanted:
                break
            r = self.rng.uniform(*radius)
            cx, cy = self.rng.uniform(r + 1, width - r - 1), self.rng.uniform(r + 1, height - r - 1)
            box = (cx - r - 3, cy - r - 3, cx + r + 3, cy + r + 3)
            if any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                   for b in boxes):
                continue
            category = CATEGORIES[self.rng.integers(len(CATEGORIES))]
            poly = self.polygon(category, cx, cy, r)
            points = [tuple(p) for p in poly.tolist()]
            draw.polygon(points, fill=self.colour(category))
            mask_img = Image.new('L', (width, height), 0)
            ImageDraw.Draw(mask_img).polygon(points, fill=1)
            objects.append(dict(category=category, polygon=poly,
                                mask=np.asarray(mask_img, dtype=bool)))
            boxes.append(box)
        return image, objects


# ----------------------------------------------------------------------------
# Formats
# ----------------------------------------------------------------------------
def _coco_split(renderer: _Renderer, out_dir: str, split: str, num: int) -> None:
    img_dir = osp.join(out_dir, f'{split}2017')
    os.makedirs(img_dir)
    images, annotations = [], []
    for image_id in range(1, num + 1):
        width, height = int(renderer.rng.choice([160, 192, 208])), int(
            renderer.rng.choice([144, 160, 176]))
        image, objects = renderer.scene(width, height, (1, 3), (18, 40))
        file_name = f'{image_id:012d}.jpg'
        image.save(osp.join(img_dir, file_name), quality=92)
        images.append(dict(id=image_id, file_name=file_name, width=width, height=height,
                           license=1))
        for obj in objects:
            poly = obj['polygon']
            x0, y0 = poly.min(axis=0)
            x1, y1 = poly.max(axis=0)
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id,
                category_id=CATEGORIES.index(obj['category']) + 1,
                segmentation=[[round(float(v), 2) for v in poly.reshape(-1)]],
                area=float(obj['mask'].sum()),
                bbox=[round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                iscrowd=0))
    ann = dict(
        info=dict(description='fec-mm demo data in COCO instances format', version='1.0',
                  year=2024),
        licenses=[dict(id=1, name='generated', url='')],
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(CATEGORIES)])
    with open(osp.join(out_dir, 'annotations', f'instances_{split}2017.json'), 'w') as f:
        json.dump(ann, f)


def _write_coco(renderer: _Renderer, out_dir: str, num_train: int, num_val: int) -> None:
    os.makedirs(osp.join(out_dir, 'annotations'))
    _coco_split(renderer, out_dir, 'train', num_train)
    _coco_split(renderer, out_dir, 'val', num_val)


def _write_ade(renderer: _Renderer, out_dir: str, num_train: int, num_val: int) -> None:
    for split, prefix, num in (('training', 'train', num_train),
                               ('validation', 'val', num_val)):
        img_dir = osp.join(out_dir, 'images', split)
        ann_dir = osp.join(out_dir, 'annotations', split)
        os.makedirs(img_dir)
        os.makedirs(ann_dir)
        for i in range(1, num + 1):
            width, height = int(renderer.rng.choice([128, 160, 192])), int(
                renderer.rng.choice([128, 144, 160]))
            image, objects = renderer.scene(width, height, (1, 4), (16, 40))
            label = np.full((height, width), ADE_CLASSES['background'][1], dtype=np.uint8)
            for obj in objects:
                label[obj['mask']] = ADE_CLASSES[obj['category']][1]
            stem = f'ADE_{prefix}_{i:08d}'
            image.save(osp.join(img_dir, stem + '.jpg'), quality=92)
            Image.fromarray(label, mode='L').save(osp.join(ann_dir, stem + '.png'))


def _write_imagenet(renderer: _Renderer, out_dir: str, num_train: int, num_val: int) -> None:
    meta_dir = osp.join(out_dir, 'meta')
    os.makedirs(meta_dir)
    for split, num in (('train', num_train), ('val', num_val)):
        lines = []
        for i in range(1, num + 1):
            width, height = int(renderer.rng.choice([96, 112, 128])), int(
                renderer.rng.choice([80, 96, 112]))
            image, objects = renderer.scene(width, height, (1, 1), (28, 38))
            label = CATEGORIES.index(objects[0]['category'])
            wnid = IMAGENET_WNIDS[objects[0]['category']]
            if split == 'train':
                rel = f'{wnid}/{wnid}_{i}.JPEG'
            else:
                rel = f'ILSVRC2012_val_{i:08d}.JPEG'
            path = osp.join(out_dir, split, rel)
            os.makedirs(osp.dirname(path), exist_ok=True)
            image.save(path, format='JPEG', quality=92)
            lines.append(f'{rel} {label}\n')
        with open(osp.join(meta_dir, f'{split}.txt'), 'w') as f:
            f.writelines(lines)
    # As ImageNet's train/: one folder per class even if the draw left one empty.
    for wnid in IMAGENET_WNIDS.values():
        os.makedirs(osp.join(out_dir, 'train', wnid), exist_ok=True)


_WRITERS = {'coco': _write_coco, 'ade': _write_ade, 'imagenet': _write_imagenet}


# ----------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------
def _read_stamp(task_dir: str) -> Optional[dict]:
    path = osp.join(task_dir, _STAMP)
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def make_demo_data(root: str = 'data/demo',
                   tasks: Sequence[str] = TASKS,
                   num_train: Optional[int] = None,
                   num_val: Optional[int] = None,
                   seed: int = 0,
                   force: bool = False) -> Dict[str, str]:
    """Write the demo datasets under ``root`` (idempotent).

    A task folder already holding demo data made with the same settings is
    left as it is; one made with other settings (or with ``force``) is
    written anew. A folder that exists but holds no demo data (e.g. a real
    dataset) is never touched: that is an error.

    Args:
        root (str): Output folder. Default 'data/demo'.
        tasks (Sequence[str]): Any of 'coco', 'ade', 'imagenet'. Default all.
        num_train (int, optional): Training images per task; default
            :data:`DEFAULT_NUM_IMAGES`.
        num_val (int, optional): Validation images per task; default
            :data:`DEFAULT_NUM_IMAGES`.
        seed (int): Seed of the drawings. Default 0.
        force (bool): Rewrite demo data even if it is up to date. Default False.

    Returns:
        dict[str, str]: task -> the folder a real config's ``data_root``
        points at (``coco``, ``ade/ADEChallengeData2016``, ``imagenet``).
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise ValueError(f'make_demo_data: unknown tasks {unknown or list(tasks)}; '
                         f'valid ones are {list(TASKS)}')
    for name, value in (('num_train', num_train), ('num_val', num_val)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f'make_demo_data: {name} must be a positive int, got {value!r}')
    logger = MMLogger.get_current_instance()
    out: Dict[str, str] = {}
    for task in tasks:
        task_dir = osp.join(root, TASK_DIRS[task])
        out[task] = task_dir
        settings = dict(
            format_version=_FORMAT_VERSION, task=task, seed=seed,
            num_train=num_train or DEFAULT_NUM_IMAGES[task][0],
            num_val=num_val or DEFAULT_NUM_IMAGES[task][1])
        stamp = _read_stamp(task_dir)
        if osp.exists(task_dir) and stamp is None:
            raise FileExistsError(
                f'make_demo_data: {task_dir} exists and holds no demo data (no {_STAMP}); '
                'refusing to overwrite it. Choose another root or remove it yourself.')
        if stamp == settings and not force:
            logger.info(f'demo data up to date: {task_dir}')
            continue
        # Write next to the target, then swap, so that an interrupted run never
        # leaves a half-written dataset that looks complete.
        tmp_dir = task_dir.rstrip(os.sep) + '.writing'
        if osp.exists(tmp_dir):
            shutil.rmtree(tmp_dir)
        os.makedirs(tmp_dir)
        seed_offset = TASKS.index(task)
        _WRITERS[task](_Renderer(seed * len(TASKS) + seed_offset), tmp_dir,
                       settings['num_train'], settings['num_val'])
        with open(osp.join(tmp_dir, _STAMP), 'w') as f:
            json.dump(settings, f)
        if osp.exists(task_dir):
            shutil.rmtree(task_dir)  # demo data of other settings: ours to replace
        os.rename(tmp_dir, task_dir)
        logger.info(f'demo data written: {task_dir} ({settings["num_train"]} train, '
                    f'{settings["num_val"]} val images)')
    return out
