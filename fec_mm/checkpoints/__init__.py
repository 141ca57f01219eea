"""Checkpoint files: safe loading, crash-safe saving, publishing.

``import fec_mm`` calls :func:`register`: torch's weights-only unpickler then
accepts the types mmengine checkpoints hold (and nothing else), and
mmengine's local loader checks files and names them in its errors, so
mmdet's, mmseg's and mmpretrain's own APIs load checkpoints of our training
(see :mod:`fec_mm.checkpoints.safe_load` for the trust model).
"""
from .atomic_save import (
    AtomicCheckpointHook,
    DivergedWeightsError,
    find_resumable_checkpoint,
    torch_save_atomic,
)
from .publish import publish_checkpoint
from .safe_load import (
    MMENGINE_CHECKPOINT_GLOBALS,
    CheckpointError,
    load_checkpoint_file,
    register,
    state_dict_of,
)

__all__ = [
    'AtomicCheckpointHook', 'CheckpointError', 'DivergedWeightsError',
    'MMENGINE_CHECKPOINT_GLOBALS', 'find_resumable_checkpoint', 'load_checkpoint_file',
    'publish_checkpoint', 'register', 'state_dict_of', 'torch_save_atomic'
]
