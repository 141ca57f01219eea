"""Save and restore the random number generators, so resumed training
continues exactly.

mmengine checkpoints hold weights, optimizer, schedulers and the iteration,
not the RNG states: after a resume, random augmentation, drop path and
proposal sampling draw other numbers than an uninterrupted run would, so the
weights drift apart from the first resumed iteration.

Where the states are restored matters. The state saved is the one right
after the checkpoint's iteration. ``IterBasedTrainLoop`` replays the data
pipeline of the already trained iterations when it resumes (to advance the
dataloader), which draws random numbers in the main process when
``num_workers=0``; so the states are restored after that replay, right before
the first new batch is fetched. Validation, which an uninterrupted run does
after the checkpoint and a resumed run does not, runs on a copy of the
states and leaves the training states as they were.

mmengine saves checkpoints on rank 0 only (``Runner.save_checkpoint`` is
``master_only``), so in distributed runs every rank's states are gathered
after each training iteration and epoch (a few KiB per rank) and rank 0
writes the latest gathered ones.
"""
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from mmengine.dist import all_gather_object, get_dist_info, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.registry import HOOKS

CHECKPOINT_KEY = 'rng_states'
RngStates = Dict[str, Any]


def get_rng_states() -> RngStates:
    """States of Python's, NumPy's and torch's generators (CPU, and the
    current CUDA device: one device per process, and asking for all of them
    would open a CUDA context on every GPU)."""
    states = dict(python=random.getstate(), numpy=np.random.get_state(),
                  torch=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: RngStates) -> None:
    """Restore states returned by :func:`get_rng_states`."""
    random.setstate(states['python'])
    np.random.set_state(states['numpy'])
    torch.set_rng_state(states['torch'])
    if 'cuda' in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states['cuda'])


class _RestoreBeforeNextBatch:
    """Stands in for ``IterBasedTrainLoop.dataloader_iterator``: passes the
    ``skip`` batches of the resume replay through, restores the RNG states
    right before the next one, then puts the original iterator back."""

    def __init__(self, loop: Any, states: RngStates, skip: int) -> None:
        self._loop = loop
        self._iterator = loop.dataloader_iterator
        self._states = states
        self._skip = skip

    def __iter__(self) -> '_RestoreBeforeNextBatch':
        return self

    def __next__(self) -> Any:
        if self._skip > 0:
            self._skip -= 1
            return next(self._iterator)
        set_rng_states(self._states)
        self._loop.dataloader_iterator = self._iterator
        return next(self._iterator)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._iterator, name)


@HOOKS.register_module()
class RngStateHook(Hook):
    """Store every rank's RNG states in checkpoints and restore them on resume.

    ``tools/train.py`` adds this hook to every training run. Checkpoints get
    a ``'rng_states'`` entry (one state per rank). A checkpoint loaded with
    ``load_from`` only (not resumed) leaves the generators alone, and so does
    a resume with another number of processes (with a warning), since the
    data then splits differently anyway.
    """

    priority = 'HIGHEST'

    def __init__(self) -> None:
        self._loaded: Optional[List[RngStates]] = None
        self._before_val: Optional[RngStates] = None
        self._gathered: Optional[List[RngStates]] = None

    def _gather(self) -> None:
        if get_world_size() > 1:
            self._gathered = all_gather_object(get_rng_states())

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        """Distributed runs: gather all ranks' states (checkpoints come next)."""
        self._gather()

    def after_train_epoch(self, runner) -> None:
        """Distributed runs: gather all ranks' states (checkpoints come next)."""
        self._gather()

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        """Add the states of all ranks (those before validation, if it is
        running); called on rank 0 only."""
        own = self._before_val if self._before_val is not None else get_rng_states()
        rank, world_size = get_dist_info()
        if world_size == 1:
            checkpoint[CHECKPOINT_KEY] = [own]
        elif self._gathered is not None:
            states = list(self._gathered)
            states[rank] = own
            checkpoint[CHECKPOINT_KEY] = states

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        """Keep the states; they are restored when training starts."""
        self._loaded = checkpoint.get(CHECKPOINT_KEY, [])

    def before_train_epoch(self, runner) -> None:
        """Restore the loaded states once, in the first epoch after a resume."""
        states, self._loaded = self._loaded, None
        if states is None or (runner.iter == 0 and runner.epoch == 0):
            return  # nothing loaded, or weights loaded without resuming
        if not states:
            MMLogger.get_current_instance().warning(
                'the resumed checkpoint holds no RNG states (not saved by tools/train.py?): '
                'random numbers will not continue as in an uninterrupted run')
            return
        rank, world_size = get_dist_info()
        if len(states) != world_size:
            MMLogger.get_current_instance().warning(
                f'the checkpoint holds RNG states of {len(states)} processes, this run has '
                f'{world_size}: random numbers will not continue as in the saved run')
            return
        loop = runner.train_loop
        skip = getattr(loop, '_iter', 0)
        if skip > 0 and hasattr(loop, 'dataloader_iterator'):
            loop.dataloader_iterator = _RestoreBeforeNextBatch(loop, states[rank], skip)
        else:
            set_rng_states(states[rank])

    def before_val(self, runner) -> None:
        """Keep the training states while validation draws random numbers."""
        self._before_val = get_rng_states()

    def after_val(self, runner) -> None:
        """Put the training states back."""
        if self._before_val is not None:
            set_rng_states(self._before_val)
            self._before_val = None
