"""make_demo_data writes the exact formats the real datasets use, agrees
with itself (masks, boxes, labels), is idempotent and never overwrites
data it did not write."""
import json
import os

import numpy as np
import pytest
from PIL import Image

from fec_mm.datasets import make_demo_data
from fec_mm.datasets.demo_data import ADE_CLASSES, ADE_DEMO_CLASSES, CATEGORIES


@pytest.fixture(scope='module')
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=6, num_val=3)
    return root


def test_coco_format_reads_with_pycocotools(root):
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    coco = COCO(str(root / 'coco/annotations/instances_train2017.json'))
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CATEGORIES)
    assert len(coco.getImgIds()) == 6 and len(coco.getAnnIds()) >= 6
    for ann in coco.loadAnns(coco.getAnnIds()):
        info = coco.loadImgs(ann['image_id'])[0]
        image = Image.open(root / 'coco/train2017' / info['file_name'])
        assert image.size == (info['width'], info['height']) and image.mode == 'RGB'
        assert ann['iscrowd'] == 0 and len(ann['segmentation'][0]) >= 6
        mask = coco.annToMask(ann)
        # area is the mask's pixel count; bbox the polygon's extent
        assert abs(mask.sum() - ann['area']) <= 0.1 * ann['area']
        x, y, w, h = ann['bbox']
        rle_box = mask_utils.toBbox(mask_utils.encode(np.asfortranarray(mask)))
        assert np.allclose(rle_box, [x, y, w, h], atol=2.0)
        # The shape's pixels carry its class colour: it was drawn, not only annotated.
        colour = np.asarray(image.convert('RGB'), dtype=float)[mask.astype(bool)].mean(0)
        assert np.argmax(colour) == {'circle': 0, 'square': 1, 'triangle': 2}[
            coco.loadCats(ann['category_id'])[0]['name']]


def test_ade_label_convention(root):
    from mmseg.datasets import ADE20KDataset
    names = ADE20KDataset.METAINFO['classes']
    # 1-based ids of the 150-class convention (0 = other, ignored).
    for name, ade_id in ADE_CLASSES.values():
        assert names[ade_id - 1] == name
    assert list(ADE_DEMO_CLASSES) == sorted(ADE_DEMO_CLASSES, key=names.index)
    base = root / 'ade/ADEChallengeData2016'
    images = sorted(os.listdir(base / 'images/validation'))
    labels = sorted(os.listdir(base / 'annotations/validation'))
    assert images == [f'ADE_val_{i:08d}.jpg' for i in range(1, 4)]
    assert labels == [n.replace('.jpg', '.png') for n in images]
    label = np.asarray(Image.open(base / 'annotations/validation' / labels[0]))
    assert label.dtype == np.uint8 and label.ndim == 2
    assert set(np.unique(label)) <= {ade_id for _, ade_id in ADE_CLASSES.values()}
    assert Image.open(base / 'images/validation' / images[0]).size == label.shape[::-1]


def test_imagenet_layout_reads_with_mmpretrain(root):
    from mmpretrain.datasets import ImageNet
    train = ImageNet(data_root=str(root / 'imagenet'), split='train',
                     metainfo=dict(classes=CATEGORIES))
    val = ImageNet(data_root=str(root / 'imagenet'), split='val',
                   metainfo=dict(classes=CATEGORIES))
    assert len(train) == 6 and len(val) == 3
    assert os.path.dirname(val.get_data_info(0)['img_path']) == str(root / 'imagenet/val')
    for info in (train.get_data_info(i) for i in range(6)):
        wnid = os.path.basename(os.path.dirname(info['img_path']))
        assert sorted(os.listdir(root / 'imagenet/train')).index(wnid) == info['gt_label']


def test_idempotent_and_safe(tmp_path):
    out = make_demo_data(str(tmp_path), tasks=['imagenet'], num_train=3, num_val=2)
    meta = tmp_path / 'imagenet/meta/train.txt'
    stamp = meta.stat().st_mtime_ns
    assert make_demo_data(str(tmp_path), tasks=['imagenet'], num_train=3, num_val=2) == out
    assert meta.stat().st_mtime_ns == stamp  # up to date: untouched
    make_demo_data(str(tmp_path), tasks=['imagenet'], num_train=4, num_val=2)
    assert len(meta.read_text().splitlines()) == 4  # other settings: rewritten
    assert not (tmp_path / 'imagenet.writing').exists()

    (tmp_path / 'coco').mkdir()
    (tmp_path / 'coco/precious.json').write_text(json.dumps({}))
    with pytest.raises(FileExistsError, match='holds no demo data'):
        make_demo_data(str(tmp_path), tasks=['coco'])
    assert (tmp_path / 'coco/precious.json').exists()


@pytest.mark.parametrize('kwargs, match', [
    (dict(tasks=['voc']), 'unknown tasks'),
    (dict(num_train=0), 'num_train must be a positive int'),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_demo_data(str(tmp_path), **kwargs)
