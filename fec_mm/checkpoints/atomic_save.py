"""Checkpoints that a kill, a power loss or a full disk cannot leave half-written.

mmengine's ``CheckpointHook`` removes the oldest checkpoint beyond
``max_keep_ckpts`` first, then writes ``epoch_N.pth`` and
``last_checkpoint`` in place: a kill or a full disk during that write leaves
a truncated ``epoch_N.pth``, no older one, and ``last_checkpoint`` naming a
file that is gone. :class:`AtomicCheckpointHook` writes the checkpoint to
``epoch_N.pth.partial``, flushes it to disk and renames it (a rename within
one folder is atomic on POSIX), then moves ``last_checkpoint`` the same way,
and only then removes the checkpoints beyond ``max_keep_ckpts``.

:func:`find_resumable_checkpoint` is what ``--resume`` uses: the newest
complete checkpoint in the work dir, whatever ``last_checkpoint`` says (it
may be stale, empty, or an absolute path of a work dir that was moved).
"""
import os
import os.path as osp
import re
from typing import Any, List, Optional

import torch
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS

from .safe_load import CheckpointError, check_zip

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


def torch_save_atomic(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that a kill, a power loss or a full disk
    cannot leave half-written: written to ``path.partial``, flushed, renamed.

    Raises:
        OSError: The folder cannot be created or written (names the path);
            no partial file is left.
    """
    folder = osp.dirname(osp.abspath(path))
    partial = path + PARTIAL_SUFFIX
    try:
        os.makedirs(folder, exist_ok=True)
        torch.save(obj, partial)
        fsync_replace(partial, path)
    except (OSError, RuntimeError) as err:  # torch.save reports a closed stream as RuntimeError
        raise OSError(f'cannot write {path}: {err}') from err
    finally:
        if osp.exists(partial):
            os.remove(partial)


@HOOKS.register_module()
class AtomicCheckpointHook(CheckpointHook):
    """mmengine's ``CheckpointHook`` (same arguments) with crash-safe saves
    and retention.

    Order of a save: write ``<name>.partial``, fsync, rename to ``<name>``,
    rewrite ``last_checkpoint`` the same way, then remove the checkpoints
    beyond ``max_keep_ckpts``. Non-local ``out_dir`` backends (``s3://``,
    ...) use mmengine's own order.
    """

    def _save_checkpoint_with_step(self, runner, step, meta) -> None:
        if not isinstance(self.file_backend, LocalBackend):
            return super()._save_checkpoint_with_step(runner, step, meta)
        outdated = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                outdated.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))

        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = self.file_backend.join_path(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        partial = self.last_ckpt + PARTIAL_SUFFIX
        try:
            runner.save_checkpoint(self.out_dir, ckpt_filename + PARTIAL_SUFFIX,
                                   self.file_client_args, save_optimizer=self.save_optimizer,
                                   save_param_scheduler=self.save_param_scheduler, meta=meta,
                                   by_epoch=self.by_epoch, backend_args=self.backend_args,
                                   **self.args)
        except BaseException:
            if osp.exists(partial):
                os.remove(partial)  # a full disk must not keep the partial file
            raise
        # Runner.save_checkpoint writes on the main process only.
        if not osp.exists(partial):
            return
        fsync_replace(partial, self.last_ckpt)
        write_text_atomic(osp.join(runner.work_dir, 'last_checkpoint'), self.last_ckpt)
        for old in outdated:
            path = self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)


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


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The newest complete checkpoint of a work dir, or None.

    Candidates are the ``epoch_N.pth``/``iter_N.pth`` files of ``work_dir``
    (newest step first), then the file ``last_checkpoint`` names if it lies
    elsewhere. The first whose zip records pass their CRC check is taken; a
    truncated one (written in place by a plain CheckpointHook when the run
    was killed) is skipped with a warning.
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
            check_zip(path)
        except CheckpointError as err:
            print_log(f'resume: skipping {path}: {err}', logger='current', level=30)
            continue
        return path
    return None
