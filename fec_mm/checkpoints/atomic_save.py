"""Checkpoints that a kill, a power loss or a full disk cannot leave half-written.

mmengine's ``CheckpointHook`` removes the oldest checkpoint beyond
``max_keep_ckpts`` first, then writes ``epoch_N.pth`` and
``last_checkpoint`` in place: a kill or a full disk during that write leaves
a truncated ``epoch_N.pth``, no older one, and ``last_checkpoint`` naming a
file that is gone. :class:`AtomicCheckpointHook` writes the checkpoint to
``epoch_N.pth.partial``, flushes it to disk and renames it (a rename within
one folder is atomic on POSIX), then moves ``last_checkpoint`` the same way,
and only then removes the checkpoints beyond ``max_keep_ckpts``. A kill
between the rename and that removal would orphan the old file, so every
save and every resumed start also remove the checkpoints older than the
oldest one the keep list names (and ``.partial`` files a kill left).

Before each save the weights are checked (:func:`check_weights_before_save`):
non-finite ones, or ones grown by orders of magnitude since the previous
save (a diverged step whose loss was still finite), stop training with
:class:`DivergedWeightsError` and nothing is written, so a bad checkpoint
never takes the place of a good one.

:func:`find_resumable_checkpoint` is what ``--resume`` uses: the newest
complete checkpoint in the work dir, whatever ``last_checkpoint`` says (it
may be stale, empty, or an absolute path of a work dir that was moved).
"""
import errno
import math
import os
import os.path as osp
import re
from typing import List, Optional

import torch
import torch.nn as nn
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from .safe_load import CheckpointError, load_checkpoint_file

PARTIAL_SUFFIX = '.partial'
_CHECKPOINT_NAME = re.compile(r'^(epoch|iter)_(\d+)\.pth$')


def fsync_replace(src: str, dst: str) -> None:
    """Flush ``src`` to disk, rename it to ``dst`` and flush the folder, so
    that after a power loss ``dst`` is either the old file or all of ``src``."""
    with open(src, 'rb') as f:
        os.fsync(f.fileno())
    os.replace(src, dst)
    folder = os.open(osp.dirname(osp.abspath(dst)), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_text_atomic(path: str, text: str) -> None:
    """Write a small text file through a temporary file and a rename."""
    partial = path + PARTIAL_SUFFIX
    with open(partial, 'w') as f:
        f.write(text)
    fsync_replace(partial, path)


def torch_save_atomic(obj, path: str) -> None:
    """``torch.save(obj, path)`` through ``<path>.partial``, fsync and a
    rename: a kill or a full disk leaves the old ``path`` (or none), never a
    truncated one.

    Raises:
        OSError: The write failed (full disk, I/O error); names ``path``.
    """
    partial = path + PARTIAL_SUFFIX
    try:
        os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
        torch.save(obj, partial)
        fsync_replace(partial, path)
    except (OSError, RuntimeError) as err:  # torch.save's RuntimeError names no file
        reason = (err.strerror if isinstance(err, OSError) else None) or \
            str(err).strip().splitlines()[0]
        raise OSError(getattr(err, 'errno', None) or errno.EIO,
                      f'cannot write {path}: {reason} (nothing written, an existing file '
                      'is unchanged)') from err
    finally:
        if osp.exists(partial):
            os.remove(partial)


# Weights whose norm grew by more than this factor since the previous save
# have diverged (a healthy run changes it by a few percent per epoch).
EXPLODED_FACTOR = 1000.0


class DivergedWeightsError(RuntimeError):
    """The weights about to be saved are not finite or have exploded."""


def weights_norm(model: nn.Module) -> float:
    """L2 norm of all parameters (inf or nan if any is)."""
    model = model.module if is_model_wrapper(model) else model
    with torch.no_grad():
        squares = [p.detach().double().pow(2).sum() for p in model.parameters()]
    return math.sqrt(float(sum(squares))) if squares else 0.0


def check_weights_before_save(model: nn.Module, previous_norm: Optional[float], where: str,
                              since: str = 'the previous checkpoint') -> float:
    """Fail unless the parameters are finite and their norm is within
    :data:`EXPLODED_FACTOR` of ``previous_norm`` (either way); return the norm.

    ``where`` starts the message; ``since`` names what ``previous_norm`` is
    the norm of.

    Raises:
        DivergedWeightsError: Names the first non-finite tensor, or both norms.
    """
    inner = model.module if is_model_wrapper(model) else model
    for name, param in inner.named_parameters():
        if not bool(torch.isfinite(param.detach()).all()):
            raise DivergedWeightsError(f'{where}: the weights are not finite (e.g. {name}); '
                                       'training diverged')
    norm = weights_norm(inner)
    if previous_norm and norm > 0 and not (
            1 / EXPLODED_FACTOR <= norm / previous_norm <= EXPLODED_FACTOR):
        raise DivergedWeightsError(
            f'{where}: the norm of the weights went from {previous_norm:.4g} to {norm:.4g} '
            f'(more than {EXPLODED_FACTOR:g}x) since {since}; training diverged')
    return norm


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with crash-safe saves
    and retention.

    Order of a save: check the weights (:func:`check_weights_before_save`;
    a failure raises :class:`DivergedWeightsError` and writes nothing), write
    ``<name>.partial``, fsync, rename to ``<name>``,
    rewrite ``last_checkpoint`` the same way, then remove the checkpoints
    beyond ``max_keep_ckpts``. Non-local ``out_dir`` backends (``s3://``,
    ...) use mmengine's own order.
    """

    def before_train(self, runner) -> None:
        super().before_train(runner)
        # The reference of the explosion check: the initial or resumed weights.
        self._saved_norm = weights_norm(runner.model)
        self._saved_what = ('the resumed checkpoint' if runner.iter or runner.epoch
                            else 'the start of training')
        if isinstance(self.file_backend, LocalBackend) and is_main_process():
            self._remove_leftovers(runner)

    def _remove_leftovers(self, runner) -> None:
        """Remove what a kill left behind: ``.partial`` files, and checkpoints
        older than the oldest one the keep list names (a kill between a save's
        rename and the removal of the outdated file orphans that file)."""
        pattern = re.escape(self.filename_tmpl).replace(r'\{\}', r'(\d+)')
        named = re.compile(f'^{pattern}$')
        partial = re.compile(f'^({pattern}|last_checkpoint){re.escape(PARTIAL_SUFFIX)}$')
        keep = list(getattr(self, 'keep_ckpt_ids', []) or [])
        oldest = min(keep) if self.max_keep_ckpts > 0 and keep else None
        if not osp.isdir(self.out_dir):
            return
        for folder in dict.fromkeys([self.out_dir, runner.work_dir]):
            for name in sorted(os.listdir(folder)):
                match = named.match(name)
                stale = (oldest is not None and folder == self.out_dir and match is not None
                         and int(match.group(1)) < oldest)
                if stale or partial.match(name):
                    path = osp.join(folder, name)
                    if osp.isfile(path):
                        os.remove(path)
                        print_log(f'removed {path} (left by an interrupted run; the keep '
                                  f'list is {keep})' if stale else
                                  f'removed {path} (a save interrupted by a kill)',
                                  logger='current')

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        ckpt_filename = self.filename_tmpl.format(step)
        path = self.file_backend.join_path(self.out_dir, ckpt_filename)
        # Checked before anything changes (keep list, last_checkpoint): a
        # refused save leaves the previous checkpoints as they were.
        previous = getattr(self, '_saved_norm', None)
        when = f'iteration {meta["iter"]}' + (f' (epoch {meta["epoch"]})' if self.by_epoch else '')
        try:
            norm = check_weights_before_save(
                runner.model, previous, f'training stopped after {when} before writing {path}',
                since=getattr(self, '_saved_what', 'the previous checkpoint'))
        except DivergedWeightsError as err:
            last = runner.message_hub.get_info('last_ckpt')
            message = (f'{err}. Nothing was written; ' + (
                f'the newest checkpoint is {last}: resume from it' if last else
                'no checkpoint was written in this run: start again') +
                ' with a lower learning rate, gradient clipping (optim_wrapper.clip_grad) '
                'or checked data.')
            runner.logger.error(message)
            raise DivergedWeightsError(message) from None
        if not isinstance(self.file_backend, LocalBackend):
            super()._save_checkpoint_with_step(runner, step, meta)
            self._saved_norm, self._saved_what = norm, 'the previous checkpoint'
            return

        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        self.last_ckpt = path
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        partial = self.last_ckpt + PARTIAL_SUFFIX
        try:
            runner.save_checkpoint(self.out_dir, ckpt_filename + PARTIAL_SUFFIX,
                                   self.file_client_args, save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=self.by_epoch, backend_args=self.backend_args,
                                   **self.args)
        except BaseException as err:
            if osp.exists(partial):
                os.remove(partial)  # a full disk must not keep the partial file
            if isinstance(err, OSError):
                # The OS names no file for a failed write (ENOSPC, EIO, ...).
                code = errno.errorcode.get(err.errno)
                reason = (err.strerror or str(err)) + (f' [{code}]' if code else '')
                message = (f'cannot write checkpoint {self.last_ckpt}: {reason}; the previous '
                           'checkpoints are kept (free space, then resume with --resume)')
                runner.logger.error(message)
                raise OSError(err.errno, message) from err
            raise
        self._saved_norm, self._saved_what = norm, 'the previous checkpoint'
        # Runner.save_checkpoint writes on the main process only.
        if not osp.exists(partial):
            return
        fsync_replace(partial, self.last_ckpt)
        write_text_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)
        self._remove_leftovers(runner)


def checkpoints_in(folder: str) -> List[str]:
    """``epoch_N.pth`` / ``iter_N.pth`` files of a folder, newest step first."""
    if not osp.isdir(folder):
        return []
    found = []
    for name in os.listdir(folder):
        match = _CHECKPOINT_NAME.match(name)
        if match:
            found.append((int(match.group(2)), osp.join(folder, name)))
    return [path for _, path in sorted(found, reverse=True)]


def check_resumable(path: str) -> dict:
    """Load ``path`` and check it holds what resuming reads; return it.

    Raises:
        FileNotFoundError: No such file.
        CheckpointError: Unreadable (truncated, corrupted, unsafe, non-finite),
            or without ``meta.epoch``/``meta.iter``/``message_hub`` (weights
            only, e.g. a published or converted file: start from it with
            ``load_from`` instead).
    """
    checkpoint = load_checkpoint_file(path, map_location='cpu')
    meta = checkpoint.get('meta') if isinstance(checkpoint, dict) else None
    missing = [f'meta.{k}' for k in ('epoch', 'iter')
               if not isinstance(meta, dict) or not isinstance(meta.get(k), int)]
    if 'message_hub' not in checkpoint:
        missing.append('message_hub')
    if missing:
        raise CheckpointError(
            f'checkpoint {path} cannot be resumed: it has no {", ".join(missing)} (weights '
            'only, e.g. a published or converted file); start from its weights with '
            f'--cfg-options load_from={path} instead')
    return checkpoint


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The newest resumable checkpoint of a work dir, or None.

    Candidates are the ``epoch_N.pth``/``iter_N.pth`` files of ``work_dir``
    (newest step first), then the file ``last_checkpoint`` names if it lies
    elsewhere. The first that loads and holds what resuming needs
    (:func:`check_resumable`) is taken; one that does not (truncated by a
    kill under a plain CheckpointHook, corrupted, weights only) is skipped
    with a warning naming it and the reason.
    """
    candidates = checkpoints_in(work_dir)
    pointer = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(pointer):
        with open(pointer) as f:
            named = f.read().strip()
        if named and osp.isfile(named) and not any(osp.samefile(named, c) for c in candidates):
            candidates.append(named)
    for path in candidates:
        try:
            check_resumable(path)
        except (CheckpointError, OSError) as err:
            print_log(f'resume: skipping {path}: {err}', logger='current', level=30)
            continue
        return path
    return None
