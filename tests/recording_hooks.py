"""Test-only hooks for the training-tool tests (imported through a config's
``custom_imports`` with this folder on PYTHONPATH)."""
import json
import os
import os.path as osp

import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class StopTrainingHook(Hook):
    """Ends training after ``iters`` iterations, as if the job had stopped."""

    priority = 'LOWEST'

    def __init__(self, iters: int) -> None:
        self.iters = iters

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 >= self.iters:
            runner.train_loop.stop_training = True


@HOOKS.register_module(force=True)
class PoisonWeightsHook(Hook):
    """Sets the model's first weight to NaN before the iteration after
    ``iters``, as a diverging run would."""

    def __init__(self, iters: int) -> None:
        self.iters = iters

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter == self.iters:
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            with torch.no_grad():
                next(model.parameters()).fill_(float('nan'))


@HOOKS.register_module(force=True)
class SetLearningRateHook(Hook):
    """Sets every learning rate to ``lr`` at the start of epoch ``epoch``
    (0-based), as a diverging schedule would."""

    def __init__(self, epoch: int, lr: float) -> None:
        self.epoch, self.lr = epoch, lr

    def before_train_epoch(self, runner) -> None:
        if runner.epoch == self.epoch:
            for group in runner.optim_wrapper.optimizer.param_groups:
                group['lr'] = self.lr


@HOOKS.register_module(force=True)
class KillBeforeValidationHook(Hook):
    """SIGKILLs its own process when the validation after epoch ``epoch``
    (1-based) begins: after that epoch's checkpoint, before its metrics."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_val_epoch(self, runner) -> None:
        if runner.epoch == self.epoch:
            import signal
            os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module(force=True)
class FreezeRankHook(Hook):
    """Rank ``rank`` sends itself ``signal`` after ``iters`` iterations:
    SIGSTOP (default) as a frozen worker, SIGKILL as one that dies."""

    def __init__(self, rank: int, iters: int, signal: str = 'SIGSTOP') -> None:
        self.rank, self.iters, self.signal = rank, iters, signal

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if get_rank() == self.rank and runner.iter + 1 == self.iters:
            import signal
            os.kill(os.getpid(), getattr(signal, self.signal))


@HOOKS.register_module(force=True)
class KillLauncherHook(Hook):
    """Rank ``rank`` SIGKILLs its launcher (torchrun's agent, the worker's
    parent) after ``iters`` iterations and trains on, as when a node's
    launcher is killed while its workers survive."""

    def __init__(self, rank: int, iters: int) -> None:
        self.rank, self.iters = rank, iters

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if get_rank() == self.rank and runner.iter + 1 == self.iters:
            import signal
            os.kill(os.getppid(), signal.SIGKILL)


@HOOKS.register_module(force=True)
class SaveRankWeightsHook(Hook):
    """Saves this rank's final weights to ``work_dir/weights_rank{rank}.pth``
    and its view of the process group to ``work_dir/dist_rank{rank}.json``."""

    def after_run(self, runner) -> None:
        rank = get_rank()
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        torch.save(model.state_dict(), osp.join(runner.work_dir, f'weights_rank{rank}.pth'))
        seen = dict(rank=rank, world_size=get_world_size(), wrapped=is_model_wrapper(runner.model),
                    master_addr=os.environ.get('MASTER_ADDR'),
                    master_port=os.environ.get('MASTER_PORT'), iter=runner.iter)
        with open(osp.join(runner.work_dir, f'dist_rank{rank}.json'), 'w') as f:
            json.dump(seen, f)


def _slow_local_put(seconds: float):
    """LocalBackend.put that writes half a file, announces it with
    ``<file>.writing`` and waits ``seconds`` before the rest: a kill in the
    wait hits a half-written checkpoint."""
    import time

    def put(self, obj, filepath) -> None:
        filepath = str(filepath)
        os.makedirs(osp.dirname(filepath) or '.', exist_ok=True)
        marker = filepath + '.writing'
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
            open(marker, 'w').close()
            time.sleep(seconds)
            f.write(obj[len(obj) // 2:])
        os.remove(marker)
    return put


def _slow_write_text_atomic(seconds: float):
    """atomic_save.write_text_atomic that announces itself with
    ``<file>.writing`` and waits ``seconds`` first: a kill in the wait hits a
    save after its checkpoint's rename, before the outdated one is removed."""
    import time

    from fec_mm.checkpoints import atomic_save
    original = atomic_save.write_text_atomic

    def write(path: str, text: str) -> None:
        marker = path + '.writing'
        open(marker, 'w').close()
        time.sleep(seconds)
        os.remove(marker)
        original(path, text)
    return write


if os.environ.get('FEC_TEST_SLOW_POINTER'):  # set by tests/test_crash_safe_checkpoints.py only
    from fec_mm.checkpoints import atomic_save
    atomic_save.write_text_atomic = _slow_write_text_atomic(
        float(os.environ['FEC_TEST_SLOW_POINTER']))

if os.environ.get('FEC_TEST_SLOW_SAVE'):  # set by tests/test_crash_safe_checkpoints.py only
    from mmengine.fileio import LocalBackend
    LocalBackend.put = _slow_local_put(float(os.environ['FEC_TEST_SLOW_SAVE']))
