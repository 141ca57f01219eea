"""Resume continues exactly: the weights after an uninterrupted run equal
those after a run stopped halfway and resumed (random crop, flip, drop path
and validation in between), with torch>=2.6's ``weights_only`` loading;
iteration-based (2 + 2 iterations) and epoch-based (1 + 1 epochs)."""
import os
import random
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mmengine.logging import MMLogger
from tiny_classifier import write_config, write_images

from fec_mm.engine import RngStateHook, build_train_parser, train

REPO = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

VAL = """
val_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='CustomDataset', data_root={data_root!r}, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='PackInputs')]),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_cfg = dict()
val_evaluator = dict(type='Accuracy', topk=(1,))
"""
# 6 images, batch 2: 3 iterations per epoch.
LOOPS = dict(
    iter=dict(total=4, stop=2, checkpoint='iter_2.pth', extra="""
train_cfg = dict(type='IterBasedTrainLoop', max_iters=4, val_interval=2)
"""),
    epoch=dict(total=6, stop=3, checkpoint='epoch_1.pth', extra="""
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=2, val_interval=1)
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1),
                     logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=True)
"""))


def _train(config, work_dir, *options):
    argv = [str(config), '--work-dir', str(work_dir),
            '--cfg-options', f'experiment_name={uuid.uuid4().hex}', *options]
    runner = train(build_train_parser().parse_args(argv))
    return runner, {k: v.clone() for k, v in runner.model.state_dict().items()}


@pytest.fixture(scope='module', params=sorted(LOOPS))
def runs(request, tmp_path_factory):
    """The uninterrupted run and the first half of the interrupted one."""
    loop = LOOPS[request.param]
    tmp = tmp_path_factory.mktemp(request.param)
    data = write_images(tmp / 'data')
    extra = VAL.format(data_root=str(data)) + loop['extra']
    config = write_config(tmp / 'tiny.py', str(data), imports=['fec_mm', 'recording_hooks'],
                          extra=extra)
    runner, full = _train(config, tmp / 'full')
    assert runner.iter == loop['total']
    # The same run, stopped halfway as by a job time limit.
    stopping = write_config(
        tmp / 'tiny_stopping.py', str(data), imports=['fec_mm', 'recording_hooks'],
        extra=extra + f"custom_hooks = [dict(type='StopTrainingHook', iters={loop['stop']})]\n")
    runner, half = _train(stopping, tmp / 'split')
    assert runner.iter == loop['stop']
    return request.param, loop, tmp, config, full, half


def _assert_equal_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f'{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}'


def test_resume_continues_exactly(runs):
    _, loop, tmp, config, full, half = runs
    work_dir = tmp / 'split'
    saved = torch.load(work_dir / loop['checkpoint'], weights_only=False)
    assert len(saved['rng_states']) == 1 and saved['meta']['iter'] == loop['stop']
    _assert_equal_weights(half, saved['state_dict'])
    # The first half really trained and the second half changes the weights.
    assert any(not torch.equal(half[k], full[k]) for k in full)

    runner, resumed = _train(config, work_dir, '--resume')
    assert runner.iter == loop['total']
    _assert_equal_weights(full, resumed)


def test_resume_from_named_checkpoint_continues_exactly(runs, tmp_path):
    name, loop, tmp, config, full, _ = runs
    if name != 'iter':
        pytest.skip('one loop type is enough here')
    _, resumed = _train(config, tmp_path / 'other', '--resume',
                        str(tmp / 'split' / loop['checkpoint']))
    _assert_equal_weights(full, resumed)


def test_resume_without_a_configured_seed_continues_exactly(runs, tmp_path):
    """randomness.seed=None: the resumed run takes the checkpoint's seed
    (mmengine alone would shuffle the data with a new one)."""
    name, loop, tmp, config, full, _ = runs
    if name != 'iter':
        pytest.skip('one loop type is enough here')
    runner, resumed = _train(config, tmp_path / 'other', '--resume',
                             str(tmp / 'split' / loop['checkpoint']),
                             '--cfg-options', 'randomness.seed=None')
    assert runner.seed == 0 and runner.train_dataloader.sampler.seed == 0
    _assert_equal_weights(full, resumed)


def test_without_restoring_rng_states_weights_differ(runs, tmp_path, monkeypatch):
    """The check above has teeth: the randomness in the config matters."""
    name, loop, tmp, config, full, _ = runs
    if name != 'iter':
        pytest.skip('one loop type is enough here')
    monkeypatch.setattr(RngStateHook, 'before_train_epoch', lambda self, runner: None)
    _, resumed = _train(config, tmp_path / 'other', '--resume',
                        str(tmp / 'split' / loop['checkpoint']))
    assert any(not torch.equal(full[k], resumed[k]) for k in full)


def test_a_run_killed_before_its_final_validation_validates_on_resume(runs, tmp_path):
    """Killed (SIGKILL) after the last epoch's checkpoint, before its
    validation: --resume says training was complete and validates; a second
    --resume finds that validation done and does nothing."""
    name, loop, tmp, config, _, _ = runs
    if name != 'epoch':
        pytest.skip('one loop type is enough here')
    killed = tmp_path / 'killed.py'
    killed.write_text(config.read_text() + "custom_hooks = [dict(type='KillBeforeValidationHook', "
                      'epoch=2)]\n')
    work_dir = tmp_path / 'work'
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(REPO)]),
               OMP_NUM_THREADS='1')
    proc = subprocess.run([sys.executable, str(REPO / 'tools' / 'train.py'), str(killed),
                           '--work-dir', str(work_dir)], env=env, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (work_dir / 'epoch_2.pth').exists()

    runner, _ = _train(config, work_dir, '--resume')
    assert runner.epoch == 2
    log = sorted(work_dir.glob('*/*.log'))[-1].read_text()
    assert ('the resumed checkpoint is at epoch 2 of 2: training was already complete; its '
            'final validation never ran (interrupted): running it now') in log
    assert 'Epoch(val) [2][3/3]' in log

    _train(config, work_dir, '--resume')
    log = sorted(work_dir.glob('*/*.log'))[-1].read_text()
    assert 'training was already complete, and its final validation was done before' in log
    assert 'Epoch(val)' not in log


def _draw():
    return random.random(), np.random.rand(), torch.rand(1).item()


def test_rng_states_round_trip_and_restore_only_on_resume(monkeypatch):
    hook = RngStateHook()
    checkpoint = {}
    hook.before_save_checkpoint(None, checkpoint)
    expected = _draw()
    # Weights loaded with load_from (iteration 0): the generators are left alone.
    hook.after_load_checkpoint(None, checkpoint)
    hook.before_train_epoch(SimpleNamespace(iter=0, epoch=0, train_loop=None))
    assert _draw() != expected
    # A resume restores them (epoch-based loop: right away).
    hook.after_load_checkpoint(None, checkpoint)
    hook.before_train_epoch(SimpleNamespace(iter=3, epoch=1, train_loop=SimpleNamespace(_iter=3)))
    assert _draw() == expected
    # A checkpoint from elsewhere, without states: a warning, generators untouched.
    warnings = []
    monkeypatch.setattr(MMLogger, 'get_current_instance',
                        lambda: SimpleNamespace(warning=warnings.append))
    hook.after_load_checkpoint(None, {})
    hook.before_train_epoch(SimpleNamespace(iter=3, epoch=1, train_loop=None))
    assert len(warnings) == 1 and 'holds no RNG states' in warnings[0]
    assert _draw() != expected
