"""Resume continues exactly: weights after 4 iterations equal those after
2 iterations, a stop, a resume and 2 more (random crop, flip, drop path and
validation in between), with torch>=2.6's ``weights_only`` loading."""
import uuid

import pytest
import torch
from tiny_classifier import write_config, write_images

from fec_mm.engine import RngStateHook, build_train_parser, train

VAL = """
val_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='CustomDataset', data_root={data_root!r}, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='PackInputs')]),
    sampler=dict(type='DefaultSampler', shuffle=False))
val_cfg = dict()
val_evaluator = dict(type='Accuracy', topk=(1,))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=4, val_interval=2)
"""


def _train(config, work_dir, *options):
    argv = [str(config), '--work-dir', str(work_dir),
            '--cfg-options', f'experiment_name={uuid.uuid4().hex}', *options]
    runner = train(build_train_parser().parse_args(argv))
    return runner, {k: v.clone() for k, v in runner.model.state_dict().items()}


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """The uninterrupted run and the first half of the interrupted one."""
    tmp = tmp_path_factory.mktemp('resume')
    data = write_images(tmp / 'data')
    config = write_config(tmp / 'tiny.py', str(data), imports=['fec_mm', 'recording_hooks'],
                          extra=VAL.format(data_root=str(data)))
    runner, full = _train(config, tmp / 'full')
    assert runner.iter == 4
    # The same run, stopped after 2 iterations as by a job time limit.
    stopping = write_config(tmp / 'tiny_stopping.py', str(data),
                            imports=['fec_mm', 'recording_hooks'],
                            extra=VAL.format(data_root=str(data))
                            + "custom_hooks = [dict(type='StopTrainingHook', iters=2)]\n")
    runner, half = _train(stopping, tmp / 'split')
    assert runner.iter == 2
    return tmp, config, full, half


def _assert_equal_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f'{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}'


def test_resume_continues_exactly(runs):
    tmp, config, full, half = runs
    work_dir = tmp / 'split'
    assert (work_dir / 'iter_2.pth').is_file() and not (work_dir / 'iter_4.pth').exists()
    saved = torch.load(work_dir / 'iter_2.pth', weights_only=False)
    assert len(saved['rng_states']) == 1 and saved['meta']['iter'] == 2
    _assert_equal_weights(half, saved['state_dict'])
    # The first half really trained and the second half changes the weights.
    assert any(not torch.equal(half[k], full[k]) for k in full)

    runner, resumed = _train(config, work_dir, '--resume')
    assert runner.iter == 4
    _assert_equal_weights(full, resumed)


def test_resume_from_named_checkpoint_continues_exactly(runs, tmp_path):
    tmp, config, full, _ = runs
    _, resumed = _train(config, tmp_path / 'other', '--resume', str(tmp / 'split' / 'iter_2.pth'))
    _assert_equal_weights(full, resumed)


def test_without_restoring_rng_states_weights_differ(runs, tmp_path, monkeypatch):
    """The check above has teeth: the randomness in the config matters."""
    tmp, config, full, _ = runs
    monkeypatch.setattr(RngStateHook, 'before_train_epoch', lambda self, runner: None)
    _, resumed = _train(config, tmp_path / 'other', '--resume', str(tmp / 'split' / 'iter_2.pth'))
    assert any(not torch.equal(full[k], resumed[k]) for k in full)
