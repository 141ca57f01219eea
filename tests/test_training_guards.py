"""Guards of tools/train.py: a non-finite loss stops training with an error
(and no checkpoint of the diverged weights), out-of-range backbone
arguments are ValueErrors, bad annotation files are named, and a second
training in a live run's work dir is refused."""
import json
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest
import torch
from mmengine.config import Config
from tiny_classifier import write_config, write_images

from fec_mm.checkpoints import DivergedWeightsError
from fec_mm.engine import WorkDirLock, build_train_parser, check_data_paths, train
from fec_mm.engine.training import build_train_config
from fec_mm.engine.training_guards import NonFiniteLossError
from fec_mm.models import FEC


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp('data'))


def _train(config, work_dir, *options):
    return train(build_train_parser().parse_args(
        [str(config), '--work-dir', str(work_dir),
         '--cfg-options', f'experiment_name={uuid.uuid4().hex}', *options]))


POISON = """
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, by_epoch=False))
custom_hooks = [dict(type='PoisonWeightsHook', iters=2)]
"""


def test_non_finite_loss_stops_training_before_a_checkpoint(data, tmp_path):
    config = write_config(tmp_path / 'tiny.py', str(data), imports=['fec_mm', 'recording_hooks'],
                          extra=POISON)
    with pytest.raises(NonFiniteLossError, match=r'the loss is nan at iteration 3 .*nothing is '
                       r'saved from this iteration on, and the newest checkpoint is .*iter_2.pth '
                       r'\(its weights were checked finite'):
        _train(config, tmp_path / 'work')
    saved = sorted(p.name for p in (tmp_path / 'work').glob('iter_*.pth'))
    # Iterations 1 and 2 were saved; the NaN weights of iteration 3 were not.
    assert saved == ['iter_1.pth', 'iter_2.pth']
    weights = torch.load(tmp_path / 'work' / 'iter_2.pth', weights_only=False)['state_dict']
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


# One iteration per epoch (two images, batch 2); epoch 2's only step uses lr
# 1e30: its loss, computed before the update, is finite, its weights are not sane.
DIVERGE = """
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=3)
param_scheduler = []
default_hooks = dict(checkpoint=dict(type='CheckpointHook', interval=1, max_keep_ckpts=1))
log_processor = dict(by_epoch=True)
custom_hooks = [dict(type='SetLearningRateHook', epoch=1, lr=1e30)]
"""


def test_diverged_weights_are_never_saved(tmp_path):
    data = write_images(tmp_path / 'data', per_class=1)
    config = write_config(tmp_path / 'tiny.py', str(data), imports=['fec_mm', 'recording_hooks'],
                          extra=DIVERGE)
    work_dir = tmp_path / 'work'
    with pytest.raises(DivergedWeightsError, match=r'training stopped after iteration 2 '
                       r'\(epoch 2\) before writing .*epoch_2.pth: the norm of the weights '
                       r'went from [\d.]+ to [\d.e+]+ \(more than 1000x\).* Nothing was '
                       r'written; the newest checkpoint is .*epoch_1.pth: resume from it'):
        _train(config, work_dir)
    # The good checkpoint stays: not displaced by the bad one (max_keep_ckpts=1).
    assert sorted(p.name for p in work_dir.glob('epoch_*')) == ['epoch_1.pth']
    assert (work_dir / 'last_checkpoint').read_text().endswith('epoch_1.pth')
    weights = torch.load(work_dir / 'epoch_1.pth', weights_only=False)['state_dict']
    assert max(v.abs().max().item() for v in weights.values() if v.is_floating_point()) < 100
    log = next(work_dir.glob('*/*.log')).read_text()
    assert 'Nothing was written; the newest checkpoint is' in log


@pytest.mark.parametrize('scale', [float('nan'), float('inf'), None, True])
def test_layer_scale_init_must_be_finite(scale):
    with pytest.raises(ValueError, match='FEC: layer_scale_init must be a finite number'):
        FEC(layer_scale_init=scale)


@pytest.mark.parametrize('rate', [1.0, 1.5, -0.5, 'x'])
def test_drop_path_rate_out_of_range(rate):
    with pytest.raises(ValueError, match=r'drop_path_rate must be in \[0, 1\)'):
        FEC(drop_path_rate=rate)


@pytest.mark.parametrize('centers', [2.5, (4, 4, 2, 2.0), True, 'four'])
def test_non_integer_centers(centers):
    with pytest.raises(ValueError, match='num_centers must be a positive int'):
        FEC(num_centers=centers)


def _coco_cfg(root, ann_file):
    return Config(dict(train_dataloader=dict(dataset=dict(
        data_root=str(root), ann_file=ann_file, data_prefix=dict(img='train2017/')))))


def test_bad_annotation_json_and_missing_images_are_named(tmp_path):
    (tmp_path / 'train2017').mkdir()
    (tmp_path / 'train2017' / 'a.jpg').write_bytes(b'')
    (tmp_path / 'broken.json').write_text('{"images": [')
    with pytest.raises(ValueError, match=r'ann_file is not valid JSON: .*broken.json .*line 1'):
        check_data_paths(_coco_cfg(tmp_path, 'broken.json'), ['train_dataloader'])
    images = [dict(id=1, file_name='a.jpg'), dict(id=2, file_name='b.jpg')]
    (tmp_path / 'ann.json').write_text(json.dumps(dict(images=images, annotations=[])))
    with pytest.raises(FileNotFoundError, match=r'1 of the 2 images listed in .*ann.json '
                       r'are missing from .*train2017, e.g. b.jpg'):
        check_data_paths(_coco_cfg(tmp_path, 'ann.json'), ['train_dataloader'])
    (tmp_path / 'train2017' / 'b.jpg').write_bytes(b'')
    check_data_paths(_coco_cfg(tmp_path, 'ann.json'), ['train_dataloader'])


def test_check_images_decodes_every_listed_image(tmp_path):
    """--check-images builds the dataset and decodes each file: a truncated
    PNG and a text file named .png are named; without the flag only the cheap
    checks run."""
    data = write_images(tmp_path / 'data', per_class=3)
    config = write_config(tmp_path / 'tiny.py', str(data))
    args = [str(config), '--work-dir', str(tmp_path / 'work'), '--check-images']
    build_train_config(build_train_parser().parse_args(args))  # all decode
    good = (data / 'dog' / '1.png').read_bytes()
    (data / 'dog' / '1.png').write_bytes(good[:len(good) // 3])
    (data / 'cat' / '2.png').write_text('not an image')
    with pytest.raises(ValueError, match=r'train_dataloader.dataset: 2 of the 6 image files .*'
                       r'cannot be read or decoded, e.g. .*cat/2.png \(not a decodable image\)'):
        build_train_config(build_train_parser().parse_args(args))
    build_train_config(build_train_parser().parse_args(args[:-1]))
    assert not (tmp_path / 'work').exists()


def test_files_missing_from_a_text_annotation_file_are_named(tmp_path):
    """The cheap check, always run: a class-list annotation file (mmpretrain's
    meta/train.txt layout) naming a missing image stops train.py up front."""
    data = write_images(tmp_path / 'data', per_class=2)
    (data / 'train.txt').write_text('cat/0.png 0\ncat/7.png 0\ndog/1.png 1\n')
    config = write_config(tmp_path / 'tiny.py', str(data), ann_file='train.txt')
    args = [str(config), '--work-dir', str(tmp_path / 'work')]
    with pytest.raises(ValueError, match=r'train_dataloader.dataset: 1 of the 3 image files it '
                       r'lists are missing, e.g. .*cat/7.png \(missing\)'):
        build_train_config(build_train_parser().parse_args(args))
    (data / 'train.txt').write_text('cat/0.png 0\ndog/1.png 1\n')
    build_train_config(build_train_parser().parse_args(args))


def test_a_second_training_in_a_live_runs_work_dir_is_refused(data, tmp_path):
    work_dir = tmp_path / 'work'
    holder = subprocess.Popen(
        [sys.executable, '-c', 'import sys, time; from fec_mm.engine import WorkDirLock; '
         f'lock = WorkDirLock({str(work_dir)!r}).acquire(); print("held", flush=True); '
         'time.sleep(600)'],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'held'
        config = write_config(tmp_path / 'tiny.py', str(data))
        with pytest.raises(RuntimeError, match=rf'work dir .*work is in use by another '
                           rf'training run \(host .*, pid {holder.pid}, started'):
            _train(config, work_dir)
        assert not list(work_dir.glob('iter_*'))  # the refused run wrote nothing
    finally:
        holder.send_signal(signal.SIGKILL)  # as a crash: the kernel drops the lock
        holder.wait()
    time.sleep(0.1)
    with WorkDirLock(str(work_dir)):
        pass
    os.remove(work_dir / '.fec_mm_train.lock')


def test_resume_or_load_from_with_another_archs_checkpoint_is_refused(data, tmp_path):
    from tiny_classifier import ARCH, write_dog_checkpoint
    config = write_config(tmp_path / 'tiny.py', str(data))
    other = write_config(tmp_path / 'other.py', str(data),
                         arch=dict(ARCH, heads=(2, 2, 2, 2)))
    checkpoint = write_dog_checkpoint(other, tmp_path / 'other_arch.pth')
    # In the form of a training checkpoint, so that --resume gets to the weights.
    saved = torch.load(checkpoint, weights_only=True)
    torch.save(dict(saved, meta=dict(epoch=0, iter=2), message_hub={}), checkpoint)
    with pytest.raises(ValueError, match=r'other_arch.pth: \d+ weights have other shapes'):
        _train(config, tmp_path / 'resumed', '--resume', str(checkpoint))
    with pytest.raises(ValueError, match=r"FEC\(arch='custom'\) cannot take these weights "
                       r'\(last checkpoint file read: .*other_arch.pth\)'):
        _train(config, tmp_path / 'loaded', '--cfg-options', f'load_from={checkpoint}')
