"""tools/train.py and tools/test.py: arguments as in mmdet 3.x, clear errors
for bad input, checks of the checkpoint against the model, launcher environments and the
slurm scripts' arguments."""
import os
import pickle
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch
from tiny_classifier import write_config, write_dog_checkpoint, write_images, write_test_config

from fec_mm.checkpoints import CheckpointError
from fec_mm.engine import (
    build_test_parser,
    build_train_parser,
    check_data_paths,
    mpi_dist_env,
    slurm_dist_env,
    slurm_first_host,
)
from fec_mm.engine.launch import pytorch_dist_env, use_cpu_model_wrapper
from fec_mm.engine.testing import test as run_test  # not test(): pytest would collect it
from fec_mm.engine.training import build_train_config

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()


@pytest.fixture
def data(tmp_path):
    return write_images(tmp_path / 'data')


@pytest.fixture
def config(tmp_path, data):
    return write_config(tmp_path / 'tiny.py', str(data))


def _train_config(*argv):
    return build_train_config(build_train_parser().parse_args([str(a) for a in argv]))


def test_train_arguments_as_mmdet(config, data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _train_config(config)
    assert cfg.work_dir == os.path.join('./work_dirs', 'tiny')
    assert cfg.launcher == 'none' and not cfg.get('resume', False)
    assert [h['type'] for h in cfg.custom_hooks] == ['RngStateHook', 'NonFiniteLossHook',
                                                     'FinalValidationHook']
    assert cfg.custom_imports.imports == ['fec_mm', 'fec_mm.engine']  # registers the hooks
    # mmengine's CheckpointHook is swapped for the crash-safe one.
    assert cfg.default_hooks.checkpoint.type == 'AtomicCheckpointHook'
    cfg = _train_config(config, '--work-dir', 'wd', '--resume',
                        '--cfg-options', 'train_cfg.max_iters=7', 'optim_wrapper.optimizer.lr=0.5')
    assert cfg.work_dir == 'wd' and cfg.resume is True and cfg.load_from is None
    assert cfg.train_cfg.max_iters == 7 and cfg.optim_wrapper.optimizer.lr == 0.5
    checkpoint = tmp_path / 'epoch_3.pth'
    checkpoint.write_bytes(b'')  # not a checkpoint: named, not a bare KeyError later
    with pytest.raises(CheckpointError, match=r'epoch_3.pth is not a readable torch checkpoint'):
        _train_config(config, '--resume', checkpoint)
    torch.save(dict(state_dict={'w': torch.ones(1)}, meta=dict(epoch=3, iter=9), message_hub={}),
               checkpoint)
    cfg = _train_config(config, '--resume', checkpoint)
    assert cfg.resume is True and cfg.load_from == str(checkpoint)
    # A config that has a hook already does not get a second one.
    with_hook = write_config(tmp_path / 'with_hook.py', str(data),
                             extra="custom_hooks = [dict(type='RngStateHook')]\n")
    assert [h['type'] for h in _train_config(with_hook).custom_hooks] == [
        'RngStateHook', 'NonFiniteLossHook', 'FinalValidationHook']
    args = build_train_parser().parse_args([str(config), '--local-rank', '3',
                                            '--launcher', 'slurm'])
    assert args.local_rank == 3 and args.launcher == 'slurm'


def test_resume_from_missing_checkpoint_names_it(config, tmp_path):
    with pytest.raises(FileNotFoundError, match='nowhere/iter_2.pth'):
        _train_config(config, '--resume', tmp_path / 'nowhere' / 'iter_2.pth')


def test_auto_scale_lr(config, tmp_path):
    with pytest.raises(ValueError, match='auto_scale_lr.base_batch_size'):
        _train_config(config, '--auto-scale-lr')
    cfg = _train_config(config, '--auto-scale-lr', '--cfg-options',
                        'auto_scale_lr.base_batch_size=16')
    assert cfg.auto_scale_lr.enable is True and cfg.auto_scale_lr.base_batch_size == 16


@pytest.mark.skipif(not NO_CUDA, reason='checks the error on machines without CUDA')
def test_amp_without_cuda_is_a_clear_error(config):
    with pytest.raises(RuntimeError, match='--amp: .*needs a CUDA GPU'):
        _train_config(config, '--amp')
    with pytest.raises(RuntimeError, match='AmpOptimWrapper in the config: .*needs a CUDA GPU'):
        _train_config(config, '--cfg-options', 'optim_wrapper.type=AmpOptimWrapper')


def test_amp_needs_a_plain_optim_wrapper(config):
    with pytest.raises(ValueError, match='--amp is only supported .* ApexOptimWrapper'):
        _train_config(config, '--amp', '--cfg-options', 'optim_wrapper.type=ApexOptimWrapper')


def test_missing_data_root_names_it_and_the_data_guide(tmp_path):
    config = write_config(tmp_path / 'tiny.py', str(tmp_path / 'no_data'))
    with pytest.raises(FileNotFoundError) as err:
        _train_config(config)
    message = str(err.value)
    assert 'train_dataloader.dataset.data_root' in message
    assert str(tmp_path / 'no_data') in message and 'docs/user_guides/dataset_prepare.md' in message


def test_missing_annotation_file_is_joined_with_data_root(tmp_path, data):
    config = write_config(tmp_path / 'tiny.py', str(data), ann_file='meta/train.txt')
    with pytest.raises(FileNotFoundError, match="ann_file does not exist: .*data/meta/train.txt "
                       r'\(see docs/user_guides/dataset_prepare.md\)'):
        _train_config(config)
    (data / 'meta').mkdir()
    (data / 'meta' / 'train.txt').write_text('cat/0.png 0\n')
    assert _train_config(config).train_dataloader.dataset.ann_file == 'meta/train.txt'


def test_val_data_is_checked_when_validation_runs(tmp_path, data):
    val = (f"val_dataloader = dict(dataset=dict(type='CustomDataset', "
           f"data_root={str(tmp_path / 'no_val')!r}))\n")
    config = write_config(tmp_path / 'tiny.py', str(data), extra=val)
    _train_config(config)  # no val_cfg: the Runner never builds the val dataloader
    config = write_config(tmp_path / 'tiny.py', str(data), extra=val + 'val_cfg = dict()\n')
    with pytest.raises(FileNotFoundError, match='val_dataloader.dataset.data_root .*no_val'):
        _train_config(config)


def test_data_check_follows_dataset_wrappers(tmp_path, data):
    from mmengine.config import Config
    missing = str(tmp_path / 'missing.json')
    cfg = Config(dict(
        train_dataloader=dict(dataset=dict(type='RepeatDataset', times=2, dataset=dict(
            type='ConcatDataset', datasets=[dict(data_root=str(data)),
                                            dict(ann_file=missing)]))),
        test_dataloader=dict(dataset=dict(data_root='s3://bucket/coco', ann_file='a.json'))))
    with pytest.raises(FileNotFoundError,
                       match=r'train_dataloader.dataset.dataset.datasets\[1\].ann_file'):
        check_data_paths(cfg, ['train_dataloader', 'val_dataloader'])
    check_data_paths(cfg, ['test_dataloader'])  # remote paths are not checked


def test_unknown_arch_lists_valid_ones_and_writes_only_the_work_dir(tmp_path, data):
    config = write_config(tmp_path / 'tiny.py', str(data), arch='tiny')
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'train.py'), str(config)],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "ValueError" in result.stderr
    assert "unknown arch 'tiny'; valid ones are ['base', 'large', 'small']" in result.stderr
    assert [p.relative_to(cwd).as_posix() for p in cwd.iterdir()] == ['work_dirs']
    assert [p.name for p in (cwd / 'work_dirs').iterdir()] == ['tiny']


def test_missing_data_writes_nothing(tmp_path):
    config = write_config(tmp_path / 'tiny.py', str(tmp_path / 'no_data'))
    cwd = tmp_path / 'cwd'
    cwd.mkdir()
    result = subprocess.run([sys.executable, str(ROOT / 'tools' / 'train.py'), str(config)],
                            cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert 'FileNotFoundError: train_dataloader.dataset.data_root does not exist' in result.stderr
    assert list(cwd.iterdir()) == []


def test_test_tool_loads_the_checkpoint_and_dumps_predictions(tmp_path, data):
    config = write_test_config(tmp_path / 'tiny.py', str(data))
    checkpoint = write_dog_checkpoint(config, tmp_path / 'dog.pth')
    out = tmp_path / 'preds.pkl'
    metrics = run_test(build_test_parser().parse_args([
        str(config), str(checkpoint), '--work-dir', str(tmp_path / 'work'), '--out', str(out),
        '--cfg-options', f'experiment_name={uuid.uuid4().hex}']))
    assert metrics['accuracy/top1'] == pytest.approx(50.0)
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 6
    assert all(int(p['pred_label']) == 1 for p in predictions)


def test_test_tool_rejects_bad_checkpoints(tmp_path, data):
    config = write_test_config(tmp_path / 'tiny.py', str(data))
    args = [str(config), '--work-dir', str(tmp_path / 'work'),
            '--cfg-options', f'experiment_name={uuid.uuid4().hex}']
    with pytest.raises(FileNotFoundError, match='checkpoint not found: .*none.pth'):
        run_test(build_test_parser().parse_args([args[0], str(tmp_path / 'none.pth')] + args[1:]))
    other = tmp_path / 'other.pth'
    torch.save(dict(state_dict={'backbone.stem.weight': torch.zeros(1)}), other)
    with pytest.raises(ValueError, match=r'other.pth shares no weight with the model'):
        run_test(build_test_parser().parse_args([args[0], str(other)] + args[1:]))
    good = torch.load(write_dog_checkpoint(config, tmp_path / 'dog.pth'))['state_dict']
    partial = tmp_path / 'partial.pth'
    torch.save(dict(state_dict={k: v for k, v in good.items() if 'stages.3' not in k}), partial)
    with pytest.raises(ValueError, match=r'partial.pth lacks \d+ of the model.*stages.3'):
        run_test(build_test_parser().parse_args([args[0], str(partial)] + args[1:]))
    wider = tmp_path / 'wider.pth'
    torch.save(dict(state_dict=dict(good, **{'head.fc.weight': torch.zeros(5, 32),
                                              'head.fc.bias': torch.zeros(5)})), wider)
    with pytest.raises(ValueError, match=r'wider.pth: 2 weights have other shapes.*\(5, 32\)'):
        run_test(build_test_parser().parse_args([args[0], str(wider)] + args[1:]))
    with pytest.raises(ValueError, match='--out must name a .pkl'):
        run_test(build_test_parser().parse_args(
            [args[0], str(other), '--out', 'x.json'] + args[1:]))


def test_launcher_environments():
    assert slurm_first_host('gpu[03-05,9],cpu1') == 'gpu03'
    assert slurm_first_host('rack[1-2]-n[01-04]') == 'rack1-n01'
    assert slurm_first_host('node7') == 'node7'
    env = dict(SLURM_PROCID='5', SLURM_NTASKS='8', SLURM_NODELIST='n[12-13]', SLURM_LOCALID='1')
    assert slurm_dist_env(env) == dict(RANK='5', WORLD_SIZE='8', LOCAL_RANK='1',
                                       MASTER_ADDR='n12', MASTER_PORT='29500')
    env.update(MASTER_PORT='1234', MASTER_ADDR='10.0.0.1')
    assert slurm_dist_env(env)['MASTER_ADDR'] == '10.0.0.1'
    assert slurm_dist_env(env)['MASTER_PORT'] == '1234'
    with pytest.raises(RuntimeError, match='--launcher slurm needs .*SLURM_NTASKS'):
        slurm_dist_env(dict(SLURM_PROCID='0', SLURM_NODELIST='n1'))
    assert mpi_dist_env(dict(OMPI_COMM_WORLD_RANK='2', OMPI_COMM_WORLD_SIZE='4',
                             OMPI_COMM_WORLD_LOCAL_RANK='0', MASTER_ADDR='h')) == dict(
        RANK='2', WORLD_SIZE='4', LOCAL_RANK='0', MASTER_ADDR='h', MASTER_PORT='29500')
    with pytest.raises(RuntimeError, match='--launcher pytorch needs .*MASTER_PORT'):
        pytorch_dist_env(dict(RANK='0', WORLD_SIZE='1', MASTER_ADDR='h'))


def test_cpu_model_wrapper_has_no_device_ids():
    from mmengine.config import Config
    cfg = Config(dict(find_unused_parameters=True))
    use_cpu_model_wrapper(cfg)
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel', broadcast_buffers=False,
                                         find_unused_parameters=True, device_ids=None)
    cfg = Config(dict(model_wrapper_cfg=dict(type='MMDistributedDataParallel',
                                             find_unused_parameters=True)))
    use_cpu_model_wrapper(cfg)
    assert cfg.model_wrapper_cfg == dict(type='MMDistributedDataParallel',
                                         find_unused_parameters=True, device_ids=None)


def _fake_srun(tmp_path):
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    srun = bin_dir / 'srun'
    srun.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "$SRUN_RECORD"\n')
    srun.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize('gres', [None, ''])
def test_slurm_train_script_arguments(tmp_path, gres):
    record = tmp_path / 'srun_args.txt'
    env = dict(os.environ, PATH=f'{_fake_srun(tmp_path)}{os.pathsep}{os.environ["PATH"]}',
               SRUN_RECORD=str(record), GPUS='4', GPUS_PER_NODE='2', CPUS_PER_TASK='3',
               SRUN_ARGS='--time=10 --mem=1G')
    if gres is not None:
        env['GRES'] = gres
    subprocess.run(['bash', str(ROOT / 'tools' / 'slurm_train.sh'), 'part', 'job', 'cfg.py',
                    'wd', '--amp', '--cfg-options', 'a=1'], env=env, check=True, timeout=60)
    args = record.read_text().splitlines()
    python = args.index('-u') - 1
    assert args[:python] == (['-p', 'part', '--job-name=job']
                             + (['--gres=gpu:2'] if gres is None else [])
                             + ['--ntasks=4', '--ntasks-per-node=2', '--cpus-per-task=3',
                                '--kill-on-bad-exit=1', '--time=10', '--mem=1G'])
    assert args[python + 1:] == ['-u', str(ROOT / 'tools' / 'train.py'), 'cfg.py', '--work-dir=wd',
                                 '--launcher=slurm', '--amp', '--cfg-options', 'a=1']


def test_slurm_test_script_arguments(tmp_path):
    record = tmp_path / 'srun_args.txt'
    env = dict(os.environ, PATH=f'{_fake_srun(tmp_path)}{os.pathsep}{os.environ["PATH"]}',
               SRUN_RECORD=str(record), GPUS='1', GPUS_PER_NODE='1')
    subprocess.run(['bash', str(ROOT / 'tools' / 'slurm_test.sh'), 'p', 'j', 'cfg.py', 'c.pth',
                    '--out', 'r.pkl'], env=env, check=True, timeout=60)
    args = record.read_text().splitlines()
    assert args[args.index('-u') + 1:] == [str(ROOT / 'tools' / 'test.py'), 'cfg.py', 'c.pth',
                                           '--launcher=slurm', '--out', 'r.pkl']


@pytest.mark.parametrize('script,argv', [('dist_train.sh', ['cfg.py']),
                                         ('slurm_train.sh', ['p', 'j', 'cfg.py'])])
def test_scripts_print_usage_on_missing_arguments(script, argv):
    result = subprocess.run(['bash', str(ROOT / 'tools' / script), *argv], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2 and 'usage:' in result.stderr
