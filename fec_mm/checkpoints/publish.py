"""Publishing a training checkpoint: weights and the meta inferencers read.

As mmdet's ``tools/model_converters/publish_model.py``: drop what only
resuming needs (optimizer, schedulers, message hub, RNG states), keep
``state_dict`` and ``meta`` (``dataset_meta`` for the inferencers' class
names and palette, ``cfg`` for ``init_model``-style APIs), and append the
first 8 hex digits of the file's sha256 to its name. The published meta is
made of plain Python values only, so the file loads with a bare
``torch.load(weights_only=True)``, without fec_mm's allowlist.
"""
import errno
import hashlib
import os
import os.path as osp
from typing import Any

import numpy as np
import torch

from .atomic_save import PARTIAL_SUFFIX, fsync_replace
from .safe_load import CheckpointError, load_checkpoint_file

PUBLISHED_META_KEYS = ('dataset_meta', 'cfg', 'epoch', 'iter', 'seed', 'experiment_name',
                       'time', 'mmengine_version')


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars/arrays as Python values and containers as
    dict/list/tuple, so no global but torch's own is pickled."""
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, tuple):  # named tuples too
        return tuple(plain(v) for v in value)
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return value
    raise CheckpointError(f'cannot publish a meta value of type {type(value).__name__}: '
                          f'{value!r:.80}')


def publish_checkpoint(in_file: str, out_file: str) -> str:
    """Write the published form of ``in_file`` and return its final path.

    Args:
        in_file (str): A checkpoint written by training.
        out_file (str): Wanted path, e.g. ``fec_maskrcnn_demo.pth``; the
            written file is ``fec_maskrcnn_demo-<sha256[:8]>.pth``.

    Returns:
        str: Path of the published file.

    Raises:
        FileNotFoundError, CheckpointError: ``in_file`` missing or unusable.
        ValueError: ``out_file`` does not end with ``.pth``.
        OSError: The write failed (full disk); names the file.
        fec_mm.outputs.OutputPathError: ``out_file``'s folder cannot be
            written (checked before ``in_file`` is read).
    """
    from ..outputs import check_output_file
    if not out_file.endswith('.pth'):
        raise ValueError(f'publish: the output name must end with .pth, got {out_file}')
    check_output_file(out_file, 'publish: output')
    checkpoint = load_checkpoint_file(in_file, map_location='cpu')
    if 'state_dict' not in checkpoint:
        raise CheckpointError(f'checkpoint {in_file} has no state_dict '
                              f'(keys {sorted(checkpoint)[:8]}); not a training checkpoint')
    meta = checkpoint.get('meta') or {}
    published = dict(state_dict=checkpoint['state_dict'],
                     meta=plain({k: meta[k] for k in PUBLISHED_META_KEYS if k in meta}))
    folder = osp.dirname(osp.abspath(out_file))
    os.makedirs(folder, exist_ok=True)
    partial = out_file + PARTIAL_SUFFIX
    try:
        try:
            torch.save(published, partial)
        except (OSError, RuntimeError) as err:  # torch.save's RuntimeError names no file
            raise OSError(getattr(err, 'errno', None) or errno.EIO,
                          f'publish: cannot write {partial}: '
                          f'{str(err).strip().splitlines()[0]} (nothing published)') from err
        with open(partial, 'rb') as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        final = out_file[:-len('.pth')] + f'-{sha[:8]}.pth'
        fsync_replace(partial, final)
    finally:
        if osp.exists(partial):
            os.remove(partial)
    return final
