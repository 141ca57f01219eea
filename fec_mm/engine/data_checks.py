"""Check a config's data paths before a Runner is built.

Without this check a missing dataset surfaces deep inside a dataset class
(often after the work dir, logs and a model were created) with a message
that does not say which config entry is wrong.
"""
import json
import os
import os.path as osp
from typing import Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config

DATA_HINT = "see docs/user_guides/dataset_prepare.md"
# JSON annotation files up to this size are parsed here (COCO val2017's
# instances file is 25 MB; train2017's 448 MB is left to the dataset).
JSON_CHECK_LIMIT = 128 << 20


def _is_remote(path: str) -> bool:
    return '://' in path


def _datasets(cfg: dict, where: str) -> Iterator[Tuple[str, dict]]:
    """Yield (where, dataset cfg) for a dataset and the ones it wraps
    (RepeatDataset, ClassBalancedDataset, ConcatDataset, ...)."""
    if not isinstance(cfg, dict):
        return
    yield where, cfg
    if isinstance(cfg.get('dataset'), dict):
        yield from _datasets(cfg['dataset'], f'{where}.dataset')
    if isinstance(cfg.get('datasets'), (list, tuple)):
        for i, sub in enumerate(cfg['datasets']):
            yield from _datasets(sub, f'{where}.datasets[{i}]')


def check_data_paths(cfg: Config, dataloaders: Sequence[str]) -> None:
    """Check that the data roots and annotation files of datasets exist.

    ``ann_file`` is joined with ``data_root`` when it is relative, as
    mmengine's ``BaseDataset`` does. Remote paths (``s3://...``) and empty
    entries are not checked.

    Args:
        cfg (Config): The full config.
        dataloaders (Sequence[str]): Keys of the dataloaders to check, e.g.
            ``('train_dataloader', 'val_dataloader')``; absent or None ones
            are skipped.

    Raises:
        FileNotFoundError: Names the config entry, the missing path and the
            docs/user_guides/dataset_prepare.md.
    """
    for key in dataloaders:
        loader = cfg.get(key)
        if not isinstance(loader, dict):
            continue
        for where, dataset in _datasets(loader.get('dataset'), f'{key}.dataset'):
            data_root = dataset.get('data_root') or ''
            if data_root and not _is_remote(data_root) and not osp.isdir(data_root):
                raise FileNotFoundError(
                    f'{where}.data_root does not exist: {osp.abspath(data_root)} ({DATA_HINT})')
            ann_file = dataset.get('ann_file') or ''
            if not isinstance(ann_file, str) or not ann_file or _is_remote(ann_file):
                continue
            path = ann_file if osp.isabs(ann_file) else osp.join(data_root, ann_file)
            if not _is_remote(path) and not osp.isfile(path):
                raise FileNotFoundError(
                    f'{where}.ann_file does not exist: {osp.abspath(path)} ({DATA_HINT})')
            if (not _is_remote(path) and path.endswith('.json')
                    and osp.getsize(path) <= JSON_CHECK_LIMIT):
                check_coco_json(path, osp.join(data_root, _image_prefix(dataset)), where)


def _image_prefix(dataset: dict) -> str:
    prefix = dataset.get('data_prefix') or {}
    return prefix.get('img', '') if isinstance(prefix, dict) else ''


def check_coco_json(path: str, image_dir: str, where: str) -> None:
    """Parse a JSON annotation file and, for COCO's layout, check that every
    image it names exists (a stat per image: about a second for COCO train).

    Raises:
        ValueError: The file is not valid JSON (names the file, line, column).
        FileNotFoundError: An image listed in the file is missing (names the
            first one and how many are missing).
    """
    try:
        with open(path, encoding='utf-8') as f:
            content = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f'{where}.ann_file is not valid JSON: {osp.abspath(path)} ({err})') \
            from err
    images = content.get('images') if isinstance(content, dict) else None
    if not isinstance(images, list):
        return
    missing = [img['file_name'] for img in images
               if isinstance(img, dict) and 'file_name' in img
               and not osp.isfile(osp.join(image_dir, img['file_name']))]
    if missing:
        raise FileNotFoundError(
            f'{where}: {len(missing)} of the {len(images)} images listed in '
            f'{osp.abspath(path)} are missing from {osp.abspath(image_dir)}, e.g. '
            f'{missing[0]} ({DATA_HINT})')


# Keys of ``get_data_info`` that name files to decode (mmdet, mmseg, mmpretrain).
IMAGE_KEYS = ('img_path', 'seg_map_path')


def _leaf_datasets(loader: dict, key: str) -> Iterator[Tuple[str, dict]]:
    for where, dataset in _datasets(loader.get('dataset'), f'{key}.dataset'):
        if 'dataset' not in dataset and 'datasets' not in dataset:
            yield where, dataset


def _decode_error(path: str) -> str:
    """'' when ``path`` reads and decodes as an image, else why not."""
    import mmcv
    from mmengine.fileio import get
    try:
        image = mmcv.imfrombytes(get(path), flag='unchanged')
    except Exception as err:  # missing file, permission, codec error
        return f'{type(err).__name__}: {err}'
    return '' if image is not None and image.size else 'not a decodable image'


def _missing_error(path: str) -> str:
    return '' if _is_remote(path) or osp.isfile(path) else 'missing'


def _listed_files(cfg: Config, dataloaders: Sequence[str],
                  skip_json: bool = False) -> Iterator[Tuple[str, List[str]]]:
    """(dataset entry, image and segmentation-map paths) of each leaf dataset,
    built as the Runner will (annotations only, no pipeline)."""
    from mmengine.registry import DATASETS, init_default_scope

    init_default_scope(cfg.get('default_scope') or 'mmengine')
    for key in dataloaders:
        loader = cfg.get(key)
        if not isinstance(loader, dict):
            continue
        for where, dataset_cfg in _leaf_datasets(loader, key):
            ann_file = dataset_cfg.get('ann_file') or ''
            if skip_json and isinstance(ann_file, str) and ann_file.endswith('.json'):
                continue  # COCO json: check_coco_json stats its images already
            dataset = DATASETS.build(dict(dataset_cfg, pipeline=[], lazy_init=False))
            yield where, [info[k] for info in (dataset.get_data_info(i)
                                               for i in range(len(dataset)))
                          for k in IMAGE_KEYS if info.get(k)]


def _check_files(cfg: Config, dataloaders: Sequence[str], error_of, problem: str,
                 skip_json: bool, workers: Optional[int]) -> int:
    from concurrent.futures import ThreadPoolExecutor
    total = 0
    for where, paths in _listed_files(cfg, dataloaders, skip_json):
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            errors = list(pool.map(error_of, paths))
        bad = [(p, e) for p, e in zip(paths, errors) if e]
        if bad:
            shown = '; '.join(f'{p} ({e})' for p, e in bad[:3])
            raise ValueError(f'{where}: {len(bad)} of the {len(paths)} image files it lists '
                             f'{problem}, e.g. {shown} ({DATA_HINT})')
        total += len(paths)
    return total


def check_listed_files_exist(cfg: Config, dataloaders: Sequence[str],
                             workers: Optional[int] = None) -> int:
    """Check that every image and segmentation map of non-COCO datasets exists.

    The cheap check that ``tools/train.py`` always runs for folder and text
    annotation layouts (mmseg's ADE20K pairs, mmpretrain's class folders or
    ``meta/*.txt``): building such a dataset only lists files, and a stat per
    file is about a second per 100k files on a local disk. COCO JSON files
    are checked by :func:`check_coco_json` instead.

    Returns:
        int: The number of files checked.

    Raises:
        ValueError: Names how many files are missing, the first few, and the
            dataset entry that lists them.
    """
    return _check_files(cfg, dataloaders, _missing_error, 'are missing', True, workers)


def check_images_decode(cfg: Config, dataloaders: Sequence[str],
                        workers: Optional[int] = None) -> int:
    """Read and decode every image (and segmentation map) the datasets list.

    The opt-in full check of ``tools/train.py --check-images``: it builds each
    dataset (annotations only, no pipeline) and decodes each file with
    mmcv, as the loading transforms will, in ``workers`` threads (default:
    the CPU count). On COCO train2017 that is minutes, so it is not done by
    default; the cheap checks (every listed file exists) always run.

    Args:
        cfg (Config): The full config (its ``default_scope`` picks the
            library whose dataset classes are built).
        dataloaders (Sequence[str]): Keys of the dataloaders to check.
        workers (int, optional): Decoding threads.

    Returns:
        int: The number of files decoded.

    Raises:
        ValueError: Names how many files failed, the first few of them and
            why, and the dataset entry that lists them.
    """
    return _check_files(cfg, dataloaders, _decode_error, 'cannot be read or decoded', False,
                        workers)
