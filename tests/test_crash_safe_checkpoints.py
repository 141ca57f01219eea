"""Crash-safe checkpoints: a training killed with SIGKILL at any moment
(also in the middle of writing a checkpoint) or stopped by a full disk
always resumes, and the resumed run ends with the same weights as an
uninterrupted one. mmengine's own CheckpointHook loses every checkpoint in
the same situations (the tests' teeth)."""
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from tiny_classifier import write_config, write_images

from fec_mm.checkpoints import CheckpointError, find_resumable_checkpoint
from fec_mm.engine import build_train_parser, train

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
ITERS = 6
# One checkpoint per iteration, keeping only the newest, as the demo configs.
EXTRA = f"""
train_cfg = dict(type='IterBasedTrainLoop', max_iters={ITERS})
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0,
                        end={ITERS})]
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False,
                                     max_keep_ckpts=1))
"""


def _train_here(config, work_dir, *options):
    argv = [str(config), '--work-dir', str(work_dir),
            '--cfg-options', f'experiment_name={uuid.uuid4().hex}', *options]
    # One thread, as the subprocesses (OMP_NUM_THREADS=1): sums over other
    # thread counts round differently, and the weights are compared bit for bit.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runner = train(build_train_parser().parse_args(argv))
    finally:
        torch.set_num_threads(threads)
    return runner, {k: v.clone() for k, v in runner.model.state_dict().items()}


def _start(config, work_dir, *options, slow_save=None, slow_pointer=None):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
               OMP_NUM_THREADS='1')
    if slow_save is not None:
        env['FEC_TEST_SLOW_SAVE'] = str(slow_save)
    if slow_pointer is not None:
        env['FEC_TEST_SLOW_POINTER'] = str(slow_pointer)
    return subprocess.Popen(
        [sys.executable, str(REPO / 'tools' / 'train.py'), str(config), '--work-dir',
         str(work_dir), *options], env=env, cwd=str(REPO), start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it had already ended
        pass
    proc.wait()


def _wait_for(predicate, proc, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.02)
    raise TimeoutError('the training subprocess never got there')


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('crash')
    data = write_images(tmp / 'data')
    config = write_config(tmp / 'tiny.py', str(data), imports=['fec_mm', 'recording_hooks'],
                          extra=EXTRA)
    _, full = _train_here(config, tmp / 'full')
    return tmp, config, full


def _assert_equal_weights(a, b):
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f'{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}'


def _resume_and_compare(config, work_dir, full):
    runner, resumed = _train_here(config, work_dir, '--resume')
    assert runner.iter == ITERS
    _assert_equal_weights(full, resumed)


@pytest.mark.parametrize('step', [2, 4])
def test_kill_while_writing_a_checkpoint_then_resume_is_exact(setup, step, tmp_path):
    tmp, config, full = setup
    work_dir = tmp_path / 'work'
    proc = _start(config, work_dir, slow_save=1.0)
    partial = work_dir / f'iter_{step}.pth.partial.writing'
    assert _wait_for(partial.exists, proc), proc.stderr.read()
    _kill(proc)
    # Half of iter_{step} was written aside; the previous checkpoint is intact.
    assert find_resumable_checkpoint(str(work_dir)) == str(work_dir / f'iter_{step - 1}.pth')
    assert not (work_dir / f'iter_{step}.pth').exists()
    _resume_and_compare(config, work_dir, full)


def test_kills_at_random_moments_then_resume_is_exact(setup, tmp_path):
    tmp, config, full = setup
    rng = random.Random(0)
    for trial in range(3):
        work_dir = tmp_path / f'work{trial}'
        proc = _start(config, work_dir, slow_save=0.2)
        # Wait until training has begun (the first checkpoint's write), then
        # kill at a random moment of the remaining iterations and saves.
        assert _wait_for(lambda: any(work_dir.glob('iter_*')), proc), proc.stderr.read()
        time.sleep(rng.uniform(0, 1.5))
        _kill(proc)
        _resume_and_compare(config, work_dir, full)


def test_kill_between_a_save_and_the_removal_of_the_outdated_one_keeps_the_limit(setup,
                                                                                tmp_path):
    """max_keep_ckpts=1: killed after iter_3.pth was renamed into place and
    before iter_2.pth was removed, both are on disk; the resumed run removes
    the orphan and ends with one checkpoint, and the exact weights."""
    tmp, config, full = setup
    work_dir = tmp_path / 'work'
    proc = _start(config, work_dir, slow_pointer=1.0)
    marker = work_dir / 'last_checkpoint.writing'
    assert _wait_for(lambda: (work_dir / 'iter_3.pth').exists() and marker.exists(), proc), \
        proc.stderr.read()
    _kill(proc)
    assert sorted(p.name for p in work_dir.glob('iter_*.pth')) == ['iter_2.pth', 'iter_3.pth']
    _resume_and_compare(config, work_dir, full)
    assert sorted(p.name for p in work_dir.glob('iter_*')) == [f'iter_{ITERS}.pth']


def test_resume_skips_checkpoints_that_cannot_be_loaded(setup, tmp_path):
    """The newest files pass their CRC check but cannot be resumed from (an
    unsafe pickle, weights without meta.epoch): skipped, named, and the newest
    loadable one is taken; naming one of them is an error naming the file."""
    tmp, config, _ = setup
    work_dir = tmp_path / 'work'
    work_dir.mkdir()
    good = work_dir / 'iter_3.pth'
    shutil.copy(tmp / 'full' / f'iter_{ITERS}.pth', good)
    weights = torch.load(good, weights_only=False)['state_dict']
    torch.save(dict(state_dict=weights, meta=dict(seed=0)), work_dir / 'iter_4.pth')
    torch.save(dict(state_dict=weights, hook=_Unsafe()), work_dir / 'iter_5.pth')
    assert find_resumable_checkpoint(str(work_dir)) == str(good)
    with pytest.raises(CheckpointError, match=r'checkpoint .*iter_4.pth cannot be resumed: it '
                       r'has no meta.epoch, meta.iter, message_hub .*load_from='):
        _train_here(config, tmp_path / 'other', '--resume', str(work_dir / 'iter_4.pth'))


class _Unsafe:
    def __reduce__(self):
        return (eval, ('1',))


def test_plain_checkpoint_hook_loses_every_checkpoint_in_the_same_kill(setup, tmp_path):
    tmp, config, _ = setup
    work_dir = tmp_path / 'work'
    # The tools swap CheckpointHook for AtomicCheckpointHook; name mmengine's
    # own hook through its scope to keep it.
    proc = _start(config, work_dir, '--cfg-options',
                  'default_hooks.checkpoint.type=mmengine.CheckpointHook', slow_save=1.0)
    assert _wait_for((work_dir / 'iter_2.pth.writing').exists, proc), proc.stderr.read()
    _kill(proc)
    assert not (work_dir / 'iter_1.pth').exists()  # removed before iter_2 was written
    assert find_resumable_checkpoint(str(work_dir)) is None


def _mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                            capture_output=True)
    return result.returncode == 0


def test_full_disk_keeps_the_last_checkpoint_then_resume_is_exact(setup, tmp_path):
    tmp, config, full = setup
    size = (tmp / 'full' / f'iter_{ITERS}.pth').stat().st_size
    disk = tmp_path / 'disk'
    # Room for the logs and one checkpoint and a half: the second save fails.
    if not _mount_tmpfs(disk, int(size * 1.5) + (48 << 10)):
        pytest.skip('mounting a small tmpfs needs root (mount -t tmpfs)')
    try:
        work_dir = disk / 'work'
        proc = _start(config, work_dir)
        _, err = proc.communicate(timeout=300)
        assert proc.returncode != 0 and 'No space left on device' in err
        # The failed write names its file, on stderr and in the work dir's log.
        message = f'cannot write checkpoint {work_dir / "iter_2.pth"}: No space left on device'
        assert message in err
        assert message in next(work_dir.glob('*/*.log')).read_text()
        assert find_resumable_checkpoint(str(work_dir)) == str(work_dir / 'iter_1.pth')
        assert not list(work_dir.glob('*.partial'))
        # Space freed elsewhere: the work dir is moved (last_checkpoint holds
        # an absolute path that no longer exists) and resumed.
        moved = tmp_path / 'moved'
        shutil.copytree(work_dir, moved)
    finally:
        subprocess.run(['umount', str(disk)], check=False)
    _resume_and_compare(config, moved, full)

