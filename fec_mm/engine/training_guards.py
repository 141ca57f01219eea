"""Guards of a training run: a non-finite loss stops it, one run per work dir.

mmengine trains on at ``loss: nan`` and exits 0, and two trainings started
in one work dir interleave their logs and overwrite each other's
checkpoints. ``tools/train.py`` adds :class:`NonFiniteLossHook` to every
run and holds a :class:`WorkDirLock` while it trains.
"""
import fcntl
import math
import os
import os.path as osp
import socket
import sys
import time
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

LOCK_NAME = '.fec_mm_train.lock'


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training with :class:`NonFiniteLossError` at the first iteration
    whose loss is not finite on any rank.

    It runs before the checkpoint hook (priority ABOVE_NORMAL), so no
    checkpoint of the diverged weights is written: the last checkpoint is
    the one to resume from (with a lower learning rate, say). In distributed
    runs the ranks agree through one all-reduce of a flag per iteration, so
    all of them stop together instead of the healthy ones waiting for a
    stopped peer.
    """

    priority = 'ABOVE_NORMAL'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        loss = (outputs or {}).get('loss')
        if loss is None:
            return
        value = float(loss.detach().float().sum()) if torch.is_tensor(loss) else float(loss)
        bad = not math.isfinite(value)
        if is_distributed():
            flag = torch.tensor([float(bad)])
            if torch_dist.get_backend() == 'nccl':
                flag = flag.cuda()
            torch_dist.all_reduce(flag)
            bad = bool(flag.item())
        if bad:
            raise NonFiniteLossError(
                f'training stopped: the loss is {value} at iteration {runner.iter + 1} '
                f'(epoch {runner.epoch + 1}) on this or another rank; no checkpoint was written '
                'after it. Resume from the last checkpoint with a lower learning rate, '
                'gradient clipping (optim_wrapper.clip_grad) or checked data.')


class WorkDirLock:
    """An exclusive lock on a work dir for the life of a training process.

    ``fcntl.flock`` on ``<work_dir>/.fec_mm_train.lock``: the kernel releases
    it when the process ends, however it ends (kill -9 included), so a
    stale lock never blocks a later run. The file holds the holder's host,
    pid, start time and command line, quoted in the refusal. Only rank 0 of
    a distributed run takes it. (flock is per machine: on a network file
    system shared by nodes it may not exclude runs of other machines.)

    Args:
        work_dir (str): The run's work dir (created if missing).
    """

    def __init__(self, work_dir: str) -> None:
        self.path = osp.join(work_dir, LOCK_NAME)
        self._file = None

    def acquire(self) -> 'WorkDirLock':
        """Take the lock.

        Raises:
            RuntimeError: Another live training holds it; the message names it.
        """
        os.makedirs(osp.dirname(self.path), exist_ok=True)
        f = open(self.path, 'a+')
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip() or 'unknown process'
            f.close()
            raise RuntimeError(
                f'work dir {osp.dirname(self.path)} is in use by another training run '
                f'({holder}); wait for it to end or use another --work-dir') from None
        f.seek(0)
        f.truncate()
        f.write(f'host {socket.gethostname()}, pid {os.getpid()}, started '
                f'{time.strftime("%Y-%m-%d %H:%M:%S")}, command: {" ".join(sys.argv)}\n')
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Give the lock back (the process's end does it too)."""
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> 'WorkDirLock':
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
