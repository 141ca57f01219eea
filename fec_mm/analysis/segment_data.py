"""Images and ground-truth segments from an mmdet or mmseg config's datasets.

An mmdet dataset gives one segment per instance mask plus the background
(ignored instances carry :data:`IGNORE`); an mmseg dataset one segment per
4-connected region of one class (its ignore index becomes :data:`IGNORE`).
The test pipelines of mmdet and mmseg resize the image but load the
annotations at the original size, so the masks stay exact.
"""
import copy
import importlib
from typing import List, Optional, Tuple

import numpy as np
from mmengine.config import Config

#: Label of ignored ground-truth pixels.
IGNORE = -1


def _dataset_cfg(cfg: Config, split: str) -> dict:
    loader = cfg.get(f'{split}_dataloader')
    if loader is None:
        raise ValueError(f'cluster quality: the config has no {split}_dataloader')
    ds = copy.deepcopy(loader['dataset'])
    while 'pipeline' not in ds and 'dataset' in ds:  # dataset wrappers
        ds = ds['dataset']
    return ds


def build_datasets(cfg: Config) -> Tuple[object, object]:
    """The (scored, held-out) datasets: the config's test dataset, and its
    train dataset read with the test pipeline (held out: SLIC's compactness
    is chosen there, never on the scored images)."""
    from mmengine.registry import DATASETS, init_default_scope
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f'cluster quality reads mmdet or mmseg configs, this one has '
                         f'default_scope={scope!r}')
    init_default_scope(scope)
    importlib.import_module(f'{scope}.datasets')
    test = _dataset_cfg(cfg, 'test')
    train = _dataset_cfg(cfg, 'train')
    train['pipeline'] = copy.deepcopy(test['pipeline'])
    train['test_mode'] = True
    return DATASETS.build(test), DATASETS.build(train)


def sample_to_arrays(sample: dict, bgr: bool,
                     ignore_index: int = 255) -> Tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) uint8 RGB image as the pipeline resized it and (H, W)
    int64 ground-truth segments at the annotations' size (:data:`IGNORE`
    where ignored) of one packed mmdet/mmseg sample (``ignore_index``: the
    ignored label of a semantic map)."""
    image = sample['inputs'].permute(1, 2, 0).numpy()
    if bgr:
        image = image[..., ::-1]
    image = np.ascontiguousarray(image).astype(np.uint8)
    ds = sample['data_samples']
    if 'gt_sem_seg' in ds:
        from skimage.measure import label
        sem = ds.gt_sem_seg.data[0].numpy().astype(np.int64)
        ignore = int(ignore_index)
        regions = label(np.where(sem == ignore, -1, sem), background=-1, connectivity=1)
        gt = np.where(sem == ignore, IGNORE, regions.astype(np.int64))
    elif 'gt_instances' in ds:
        masks = ds.gt_instances.get('masks')
        if masks is None:
            raise ValueError('cluster quality: the test pipeline gives no instance masks '
                             '(LoadAnnotations with_mask=True is needed)')
        gt = np.zeros((masks.height, masks.width), np.int64)
        for i, m in enumerate(masks.to_ndarray()):
            gt[m.astype(bool)] = i + 1
        ignored = ds.get('ignored_instances')
        if ignored is not None and ignored.get('masks') is not None:
            for m in ignored.masks.to_ndarray():
                gt[m.astype(bool)] = IGNORE
    else:
        raise ValueError('cluster quality: a sample holds neither gt_sem_seg nor '
                         'gt_instances; the test pipeline must load the annotations')
    return image, gt


def read_samples(dataset, num: Optional[int], bgr: bool) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The first ``num`` (all if None) samples of a dataset as arrays."""
    total = len(dataset)
    n = total if num is None else min(num, total)
    ignore = getattr(dataset, 'ignore_index', 255)
    return [sample_to_arrays(dataset[i], bgr, ignore) for i in range(n)]
