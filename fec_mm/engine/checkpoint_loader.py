"""A local-file checkpoint loader that works with torch>=2.6.

mmengine 0.10 calls ``torch.load(filename)`` without ``weights_only``; since
torch 2.6 that means ``weights_only=True``, which refuses the mmengine
objects (``HistoryBuffer``, the message hub) in every checkpoint mmengine
writes, so ``--resume`` fails. The tools replace mmengine's local loader by
this one: the file is the user's own choice (a work dir, ``--resume``,
``load_from``), as with mmengine's loader before torch 2.6.
"""
import os.path as osp
from typing import Any, Callable, Union

import torch
from mmengine.runner import CheckpointLoader

MapLocation = Union[None, str, torch.device, Callable]


def load_from_trusted_local(filename: str, map_location: MapLocation = None) -> Any:
    """Load a local checkpoint with ``weights_only=False``.

    Args:
        filename (str): Path of the checkpoint file (``~`` is expanded).
        map_location (str | torch.device | callable, optional): As in
            ``torch.load``. Default None.

    Returns:
        Any: What the file holds (a dict for mmengine checkpoints).

    Raises:
        FileNotFoundError: The file does not exist.
        RuntimeError: The file exists but is not a readable checkpoint.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename}')
    try:
        return torch.load(filename, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise RuntimeError(f'cannot read checkpoint {filename} '
                           f'({type(err).__name__}: {err})') from err


def register_trusted_local_loader() -> None:
    """Make :func:`load_from_trusted_local` mmengine's loader for local paths.

    Registered under the empty prefix, which matches every path that no
    other scheme (``http://``, ``s3://``, ...) claims.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_trusted_local, force=True)
