"""Reading checkpoints with torch's weights-only safety kept on.

Why: mmengine 0.10.7 calls ``torch.load(filename)``; since torch 2.6 that
means ``weights_only=True``, whose unpickler refuses the few non-tensor
types in every checkpoint mmengine writes (the message hub's
``HistoryBuffer``, and NumPy arrays and scalars inside it and in the RNG
states), so mmdet's ``DetInferencer``/``init_detector``/``tools/test.py``,
mmseg's ``init_model`` and mmpretrain's ``get_model`` all fail on a
checkpoint of our own training.

Trust model. mmengine's main branch answered this by passing
``weights_only=False`` in its loaders, which lets any checkpoint file run
arbitrary code while it is unpickled. We keep the weights-only unpickler
and allow exactly the types mmengine checkpoints hold
(:data:`MMENGINE_CHECKPOINT_GLOBALS`, and the ``argparse.Namespace`` in
which timm's training script, hence the authors' classification files,
stores its arguments: :data:`TIMM_CHECKPOINT_GLOBALS`): plain data containers whose
unpickling constructs values and calls no other code, the list torch's own
documentation gives for NumPy arrays. A file that names any other global
(a class with a malicious ``__reduce__``, say) is still refused, by every
loader in the process (mmengine's local, HTTP and other schemes all call
``torch.load`` with the default). ``import fec_mm`` registers the allowlist
(:func:`register`), so users of the libraries' own APIs need nothing else.

:func:`load_checkpoint_file` is the checked reader of local files that
``import fec_mm`` also installs as mmengine's local loader: it keeps
mmengine's behaviour for good files and turns bad ones into a
:class:`CheckpointError` naming the file and the problem (missing,
truncated or corrupted zip, not a checkpoint, unsafe contents, non-finite
weights).
"""
import argparse
import os.path as osp
import pickle
import re
import threading
import zipfile
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader
from torch import Tensor

MapLocation = Union[None, str, torch.device, Callable]


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


def _numpy_globals() -> List[Any]:
    """What pickled NumPy arrays, dtypes and scalars reference, under the
    names of NumPy 1.x (``numpy.core``) and 2.x (``numpy._core``)."""
    from numpy.core import multiarray
    dtype_classes = sorted({type(np.dtype(t)) for t in np.typecodes['All'] if t not in 'OV'},
                           key=lambda c: c.__name__)
    found: List[Any] = [np.ndarray, np.dtype, *dtype_classes]
    for name in ('_reconstruct', 'scalar'):
        for module in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            found.append((getattr(multiarray, name), f'{module}.{name}'))
    return found


def history_buffer_getattr(owner: Any, name: str) -> Any:
    """The one ``getattr`` a checkpoint may call: a statistics method of
    ``HistoryBuffer``.

    ``HistoryBuffer.__getstate__`` pickles its statistics methods, which
    pickle protocol 2 (torch's) writes as ``getattr(HistoryBuffer, 'mean')``.
    A general ``getattr`` in the unpickler would reach ``__globals__`` and
    from there any function, so this stands in for it under the name
    ``builtins.getattr`` and allows nothing else.
    """
    # The defaults are registered on the first HistoryBuffer(); later ones
    # through HistoryBuffer.register_statistics.
    allowed = {'min', 'max', 'current', 'mean', *HistoryBuffer._statistics_methods}
    if owner is HistoryBuffer and name in allowed:
        return getattr(HistoryBuffer, name)
    raise pickle.UnpicklingError(
        f'getattr({owner!r}, {name!r}) is not allowed: fec_mm allows getattr only for the '
        f'statistics methods of HistoryBuffer ({sorted(allowed)})')


MMENGINE_CHECKPOINT_GLOBALS: List[Any] = [
    HistoryBuffer, (history_buffer_getattr, 'builtins.getattr'), *_numpy_globals()]
"""Non-tensor types in checkpoints that mmengine's Runner writes: the message
hub's ``HistoryBuffer`` (two NumPy arrays, a length and its statistics
methods, fetched through :func:`history_buffer_getattr`), NumPy arrays,
dtypes and scalars (history buffers, NumPy's RNG state). Entries that are
``(object, name)`` pairs serve the object under that pickled name."""


TIMM_CHECKPOINT_GLOBALS: List[Any] = [argparse.Namespace]
"""Non-tensor types in checkpoints that timm's training script writes (the
authors' classification files): its command-line ``args``, an
``argparse.Namespace``, which unpickles as an empty namespace whose
attributes are then set to the (equally checked) values of the file; no
code of the file runs."""


def register() -> None:
    """Allow :data:`MMENGINE_CHECKPOINT_GLOBALS` and
    :data:`TIMM_CHECKPOINT_GLOBALS` in torch's weights-only
    unpickler, make :func:`load_checkpoint_file` mmengine's loader of
    local paths (the empty prefix, matching every path no other scheme
    claims), and install the whole-model loading of models with an FEC
    backbone (:mod:`fec_mm.models.whole_model`: the authors' files
    converted, checkpoints lacking whole parts refused). Idempotent."""
    from ..models import whole_model  # noqa: PLC0415 - models import this module
    torch.serialization.add_safe_globals(MMENGINE_CHECKPOINT_GLOBALS + TIMM_CHECKPOINT_GLOBALS)
    CheckpointLoader.register_scheme(prefixes='', loader=load_checkpoint_file, force=True)
    whole_model.install()


# What torch's weights-only unpickler says of a forbidden global or call.
_UNSAFE = re.compile(r'GLOBAL|global|reduce|build|new object|getattr', re.IGNORECASE)


def _unpickler_reason(message: str) -> str:
    """The specific part of torch's weights-only error, without torch's
    general paragraphs and without its advice on how to load the file anyway
    (``weights_only=False``, allowlisting the global "if you trust" it)."""
    if 'WeightsUnpickler error:' in message:
        reason = message.split('WeightsUnpickler error:', 1)[1].strip().split('\n\n', 1)[0]
    else:
        parts = [p.strip() for p in message.split('\n\n') if p.strip()]
        reason = ' '.join(p for p in parts if not p.startswith(
            ('Weights only load failed', 'Check the documentation')))
    sentences = re.split(r'(?<=\.)\s+', reason.strip())
    kept = [s for s in sentences
            if not re.search(r'safe_globals|weights_only|if you trust', s, re.IGNORECASE)]
    return ' '.join(kept).strip().rstrip('.') or message.strip().splitlines()[0]


# The last file load_checkpoint_file read, per thread, so that a model that
# refuses the weights (FEC with another arch's tensors) can name the file.
_last_read = threading.local()


def last_read_file() -> Optional[str]:
    """The file :func:`load_checkpoint_file` read last in this thread."""
    return getattr(_last_read, 'filename', None)


def check_zip(filename: str) -> None:
    """Fail on a truncated or corrupted checkpoint of torch's zip format.

    torch does not check the CRCs of the zip records it reads, so flipped
    bytes inside a tensor load silently; :meth:`zipfile.ZipFile.testzip`
    reads every record once and compares them (about 0.2 s for 100 MB).
    Files of torch's legacy (non-zip) format are left to ``torch.load``.
    """
    if not zipfile.is_zipfile(filename):
        with open(filename, 'rb') as f:
            head = f.read(4)
        if head.startswith(b'PK'):
            raise CheckpointError(f'checkpoint {filename} is truncated or corrupted '
                                  '(its zip directory is missing or damaged)')
        return
    try:
        with zipfile.ZipFile(filename) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise CheckpointError(f'checkpoint {filename} is truncated or corrupted ({err})') from err
    if bad is not None:
        raise CheckpointError(f'checkpoint {filename} is corrupted: record {bad} fails '
                              'its CRC check')


def state_dict_of(checkpoint: Any) -> Dict[str, Tensor]:
    """The weights of a loaded checkpoint: under 'state_dict', 'model', or
    the top-level tensors."""
    if not isinstance(checkpoint, dict):
        return {}
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k: v for k, v in checkpoint.items() if isinstance(v, Tensor)}


def check_finite(filename: str, state_dict: Dict[str, Tensor]) -> None:
    """Fail on weights that hold NaN or infinity (a corrupted file or a
    diverged run), naming the first such tensors."""
    bad = [k for k, v in state_dict.items()
           if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f'checkpoint {filename} has non-finite weights in {len(bad)} '
                              f'tensors, e.g. {bad[:3]} (corrupted file or diverged training)')


def load_checkpoint_file(filename: str, map_location: MapLocation = None) -> Any:
    """Read a local checkpoint with torch's weights-only unpickler and check it.

    Args:
        filename (str): Path of the file (``~`` is expanded).
        map_location (str | torch.device | callable, optional): As in
            ``torch.load``. Default None.

    Returns:
        Any: What the file holds: a dict with at least one tensor of weights.

    Raises:
        FileNotFoundError: The file does not exist.
        CheckpointError: Truncated or corrupted, not a checkpoint, unsafe
            contents (a global outside the allowlist), no weights, or
            non-finite weights. The message names the file.
    """
    filename = osp.expanduser(filename)
    if not osp.isfile(filename):
        raise FileNotFoundError(f'checkpoint not found: {filename}')
    check_zip(filename)
    try:
        checkpoint = torch.load(filename, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(str(err))
        if not _UNSAFE.search(reason):
            raise CheckpointError(f'checkpoint {filename} is not a readable torch checkpoint '
                                  f'({reason})') from err
        raise CheckpointError(
            f'checkpoint {filename} cannot be loaded with weights_only=True ({reason}). '
            'fec_mm allows only the types mmengine checkpoints hold; a file that names other '
            'globals or calls can run code when it is loaded, so it is refused.') from err
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f'checkpoint {filename} is not a readable torch checkpoint '
                              f'({type(err).__name__}: {err})') from err
    state_dict = state_dict_of(checkpoint)
    if not state_dict:
        what = (f'a dict without tensors (keys {sorted(map(str, checkpoint))[:8]})'
                if isinstance(checkpoint, dict) else f'a {type(checkpoint).__name__}')
        raise CheckpointError(f'checkpoint {filename} holds {what}, not model weights')
    check_finite(filename, state_dict)
    _last_read.filename = filename
    return checkpoint
