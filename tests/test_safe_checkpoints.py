"""Checkpoints load with torch's weights-only unpickler kept on, through the
allowlist ``import fec_mm`` registers; bad files are errors naming the file."""
import os
import random
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import HistoryBuffer
from mmengine.runner import CheckpointLoader

import fec_mm  # noqa: F401  (registers the allowlist and the checked local loader)
from fec_mm.checkpoints import CheckpointError, load_checkpoint_file


def save_mmengine_like(path, weights=None):
    """The non-tensor types of a checkpoint mmengine's Runner and our RNG
    hook write: history buffers, NumPy arrays and scalars, RNG states."""
    torch.save(dict(
        meta=dict(seed=0, iter=2, dataset_meta=dict(classes=('a', 'b'))),
        state_dict=weights if weights is not None else {'w': torch.ones(3), 'n': torch.arange(3)},
        message_hub=dict(log_scalars={'loss': HistoryBuffer([1.0, 2.0], [1, 1])},
                         runtime_info={'iter': 2, 'lr': np.float64(0.1)}),
        rng_states=[dict(python=random.getstate(), numpy=np.random.get_state(),
                         torch=torch.get_rng_state())]), path)
    return path


def test_mmengine_objects_load_with_weights_only(tmp_path):
    path = save_mmengine_like(tmp_path / 'ckpt.pth')
    loaded = torch.load(path)  # what mmengine's loaders call: weights_only=True
    assert isinstance(loaded['message_hub']['log_scalars']['loss'], HistoryBuffer)
    assert loaded['message_hub']['log_scalars']['loss'].mean() == 1.5
    saved = torch.load(path, weights_only=False)['rng_states'][0]['numpy']
    assert loaded['rng_states'][0]['numpy'][0] == 'MT19937'
    assert np.array_equal(loaded['rng_states'][0]['numpy'][1], saved[1])
    assert torch.equal(CheckpointLoader.load_checkpoint(str(path))['state_dict']['w'],
                       torch.ones(3))


def test_without_fec_mm_the_same_file_is_refused(tmp_path):
    """The allowlist is what makes it load (torch>=2.6 alone refuses it)."""
    path = save_mmengine_like(tmp_path / 'ckpt.pth')
    code = f'import torch, mmengine.logging; torch.load({str(path)!r})'
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode != 0 and 'HistoryBuffer' in result.stderr


class _Evil:
    marker = None

    def __reduce__(self):
        return (os.system, (f'touch {self.marker}',))


def test_a_file_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    evil = _Evil()
    evil.marker = str(marker)
    path = tmp_path / 'evil.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'payload': evil}, path)
    for load in (load_checkpoint_file, CheckpointLoader.load_checkpoint):
        with pytest.raises(CheckpointError, match=r'evil.pth cannot be loaded with '
                           r'weights_only=True .*system'):
            load(str(path))
    assert not marker.exists()


class _Eval:
    def __reduce__(self):
        return (eval, ('1 + 1',))


def test_the_refusal_gives_no_advice_on_loading_the_file_unsafely(tmp_path):
    path = tmp_path / 'eval.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'payload': _Eval()}, path)
    with pytest.raises(CheckpointError, match=r'eval.pth cannot be loaded with weights_only=True '
                       r'\(Unsupported global: GLOBAL eval .*\).* so it is refused') as info:
        load_checkpoint_file(str(path))
    message = str(info.value)
    for advice in ('weights_only=False', 'add_safe_globals', 'safe_globals', 'trust',
                   'can still be loaded'):
        assert advice not in message


def _flip_tensor_bytes(path, member_suffix='data/0'):
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(member_suffix))
    with open(path, 'r+b') as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype='<u2')
        data_start = info.header_offset + 30 + int(name_len) + int(extra_len)
        f.seek(data_start)
        chunk = bytearray(f.read(4))
        f.seek(data_start)
        f.write(bytes(b ^ 0xFF for b in chunk))


def test_bad_files_are_errors_naming_file_and_problem(tmp_path):
    good = save_mmengine_like(tmp_path / 'good.pth')
    data = good.read_bytes()

    with pytest.raises(FileNotFoundError, match='checkpoint not found: .*gone.pth'):
        load_checkpoint_file(str(tmp_path / 'gone.pth'))

    truncated = tmp_path / 'truncated.pth'
    truncated.write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match='truncated.pth is truncated or corrupted'):
        load_checkpoint_file(str(truncated))

    flipped = tmp_path / 'flipped.pth'
    flipped.write_bytes(data)
    _flip_tensor_bytes(flipped)
    with pytest.raises(CheckpointError, match='flipped.pth is corrupted: record .* CRC'):
        load_checkpoint_file(str(flipped))
    # torch alone loads the flipped bytes as if nothing were wrong
    assert not torch.equal(torch.load(flipped)['state_dict']['w'], torch.ones(3))

    nan = save_mmengine_like(tmp_path / 'nan.pth',
                             {'ok': torch.ones(2), 'bad': torch.tensor([1.0, float('nan')])})
    with pytest.raises(CheckpointError, match=r"nan.pth has non-finite weights .*\['bad'\]"):
        load_checkpoint_file(str(nan))

    a_list = tmp_path / 'list.pth'
    torch.save([1, 2, 3], a_list)
    with pytest.raises(CheckpointError, match='list.pth holds a list, not model weights'):
        load_checkpoint_file(str(a_list))

    no_tensors = tmp_path / 'config.pth'
    torch.save({'lr': 0.1, 'name': 'x'}, no_tensors)
    with pytest.raises(CheckpointError, match=r'config.pth holds a dict without tensors'):
        load_checkpoint_file(str(no_tensors))

    text = tmp_path / 'notes.pth'
    text.write_text('not a checkpoint at all')
    with pytest.raises(CheckpointError, match='notes.pth is not a readable torch checkpoint'):
        load_checkpoint_file(str(text))


def test_history_buffers_load_in_a_fresh_process(tmp_path):
    """Before any HistoryBuffer exists, its statistics methods are not yet
    registered; the restricted getattr still accepts them."""
    path = save_mmengine_like(tmp_path / 'ckpt.pth')
    code = (f'import fec_mm, torch; b = torch.load({str(path)!r})["message_hub"]'
            '["log_scalars"]["loss"]; print(b.mean())')
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith('1.5')


def test_the_stand_in_getattr_allows_nothing_else(tmp_path):
    class Sneaky:
        def __reduce__(self):
            return (getattr, (HistoryBuffer, '__init__'))

    path = tmp_path / 'sneaky.pth'
    torch.save({'state_dict': {'w': torch.ones(1)}, 'x': Sneaky()}, path)
    with pytest.raises(CheckpointError, match=r"getattr\(.*HistoryBuffer.*'__init__'\) is not "
                       'allowed'):
        load_checkpoint_file(str(path))
