"""Guards of a training run: a non-finite loss stops it, one run per work
dir, a run resumed at its end still validates.

mmengine trains on at ``loss: nan`` and exits 0, two trainings started in
one work dir interleave their logs and overwrite each other's checkpoints,
and a run killed after its final checkpoint but before its final validation
resumes to "resumed epoch: N", trains nothing and validates nothing.
``tools/train.py`` adds :class:`NonFiniteLossHook` and
:class:`FinalValidationHook` to every run and holds a :class:`WorkDirLock`
while it trains.
"""
import fcntl
import json
import math
import os
import os.path as osp
import socket
import sys
import time
from typing import Optional

import torch
import torch.distributed as torch_dist
from mmengine.dist import is_distributed, is_main_process
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

LOCK_NAME = '.fec_mm_train.lock'
# Written after each validation of a training run: {"epoch": E, "iter": I}.
VALIDATED_NAME = '.fec_mm_validated.json'


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


@HOOKS.register_module()
class NonFiniteLossHook(Hook):
    """Stop training with :class:`NonFiniteLossError` at the first iteration
    whose loss is not finite on any rank.

    It runs before the checkpoint hook (priority ABOVE_NORMAL), so no
    checkpoint is written after the iteration; the loss was computed before
    that iteration's update, so the weights of the previous save may already
    have diverged: :class:`~fec_mm.checkpoints.AtomicCheckpointHook` checks
    the weights themselves before each save. In distributed
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
            last = runner.message_hub.get_info('last_ckpt')
            checked = any(type(h).__name__ == 'AtomicCheckpointHook' for h in runner.hooks)
            newest = (f'the newest checkpoint is {last}' + (
                ' (its weights were checked finite and not exploded when it was saved)'
                if checked else '') if last else 'no checkpoint was written in this run')
            raise NonFiniteLossError(
                f'training stopped: the loss is {value} at iteration {runner.iter + 1} '
                f'(epoch {runner.epoch + 1}) on this or another rank; nothing is saved from '
                f'this iteration on, and {newest}. Resume from it with a lower learning rate, '
                'gradient clipping (optim_wrapper.clip_grad) or checked data.')


@HOOKS.register_module()
class FinalValidationHook(Hook):
    """A run resumed from its final checkpoint says so and runs the final
    validation if that was never done.

    The checkpoint of the last epoch (iteration) is written before its
    validation, so a kill in between leaves a finished checkpoint without
    metrics, and mmengine's loop, resumed at ``max_epochs``, neither trains
    nor validates. After every validation of a training run this hook
    writes ``<work_dir>/.fec_mm_validated.json`` (the epoch and iteration);
    at the start of a run whose resumed state is already at the end, it
    validates unless that file names the same step.
    """

    priority = 'LOWEST'  # before_train: after the other hooks' set-up

    def before_train(self, runner) -> None:
        loop = runner.train_loop
        by_epoch = hasattr(loop, 'max_epochs')
        total = getattr(loop, 'max_epochs' if by_epoch else 'max_iters', None)
        done = runner.epoch if by_epoch else runner.iter
        if not isinstance(total, int) or done < total or done == 0:
            return  # not resumed at the end (or a loop of unknown length)
        unit = 'epoch' if by_epoch else 'iteration'
        where = (f'the resumed checkpoint is at {unit} {done} of {total}: training was '
                 'already complete')
        if getattr(runner, 'val_loop', None) is None:
            runner.logger.warning(f'{where}; nothing to do (no validation configured)')
            return
        if self._validated(runner) == (runner.epoch, runner.iter):
            runner.logger.warning(f'{where}, and its final validation was done before '
                                  f'({osp.join(runner.work_dir, VALIDATED_NAME)}); '
                                  'nothing to do')
            return
        runner.logger.warning(f'{where}; its final validation never ran (interrupted): '
                              'running it now')
        runner.val_loop.run()

    def after_val_epoch(self, runner, metrics=None) -> None:
        if not is_main_process():
            return
        from ..checkpoints.atomic_save import write_text_atomic
        write_text_atomic(osp.join(runner.work_dir, VALIDATED_NAME),
                          json.dumps(dict(epoch=runner.epoch, iter=runner.iter)))

    @staticmethod
    def _validated(runner):
        path = osp.join(runner.work_dir, VALIDATED_NAME)
        try:
            with open(path) as f:
                step = json.load(f)
            return step['epoch'], step['iter']
        except (OSError, ValueError, KeyError, TypeError):
            return None


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
