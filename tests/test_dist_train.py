"""tools/dist_train.sh on CPU with gloo: two "nodes" of one process each
(localhost) end with identical weights, and a distributed run stopped
after 2 iterations and resumed ends where the uninterrupted one does."""
import json
import os
import pickle
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from tiny_classifier import write_config, write_dog_checkpoint, write_images, write_test_config

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
TIME_LIMIT_S = 150


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun's workers start
    sessions of their own, so killing the process group is not enough)."""
    children = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            fields = stat.read_text().rsplit(')', 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo.extend(children.get(tree[-1], []))
    for member in tree:
        try:
            os.kill(member, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _dist_run(script: str, tmp: Path, args: list, work_dir: Path, nnodes: int, nproc: int,
              *options, expect_success: bool = True):
    """Run ``tools/{script} *args NPROC --work-dir WORK_DIR *options`` once per
    node (all on localhost) and wait, failing with the log of a node that
    hangs or (with ``expect_success``) fails. Returns the port, or with
    ``expect_success=False`` the exit codes and node 0's log."""
    port = _free_port()
    env = dict(os.environ, NNODES=str(nnodes), MASTER_ADDR='127.0.0.1', PORT=str(port),
               PYTHONPATH=os.pathsep.join(filter(None, [str(TESTS),
                                                        os.environ.get('PYTHONPATH')])),
               OMP_NUM_THREADS='1')
    procs, logs = [], []
    for node_rank in range(nnodes):
        logs.append(tmp / f'{work_dir.name}_node{node_rank}.log')
        with open(logs[-1], 'w') as out:
            procs.append(subprocess.Popen(
                ['bash', str(ROOT / 'tools' / script), *map(str, args), str(nproc),
                 '--work-dir', str(work_dir), *options],
                env=dict(env, NODE_RANK=str(node_rank)), cwd=tmp, stdout=out,
                stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIME_LIMIT_S
    try:
        for proc in procs:
            proc.wait(timeout=max(1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        hung = [p for p in procs if p.poll() is None]
        for proc in hung:
            _kill_tree(proc.pid)
            proc.wait()
    log_tail = logs[0].read_text(errors='replace')[-3000:]
    assert not hung, f'{script} did not finish in {TIME_LIMIT_S} s:\n{log_tail}'
    if not expect_success:
        return [p.returncode for p in procs], logs[0].read_text(errors='replace')
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log.read_text(errors='replace')[-3000:]
    return port


def _dist_train(tmp: Path, config: Path, work_dir: Path, nnodes: int, nproc: int, *options):
    return _dist_run('dist_train.sh', tmp, [config], work_dir, nnodes, nproc, *options)


def _weights(work_dir: Path, rank: int) -> dict:
    return torch.load(work_dir / f'weights_rank{rank}.pth')


def _differing(a: dict, b: dict) -> list:
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def _assert_same(a: dict, b: dict) -> None:
    different = _differing(a, b)
    assert not different, f'{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}'


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('dist')
    data = write_images(tmp / 'data', per_class=4)
    hooks = "custom_hooks = [dict(type='SaveRankWeightsHook')]\n"
    config = write_config(tmp / 'tiny.py', str(data), imports=['fec_mm', 'recording_hooks'],
                          extra=hooks)
    work_dir = tmp / 'two_nodes'
    port = _dist_train(tmp, config, work_dir, nnodes=2, nproc=1)
    return tmp, data, config, work_dir, port


def test_two_nodes_one_process_each_end_with_identical_weights(tiny):
    _, _, _, work_dir, port = tiny
    seen = [json.loads((work_dir / f'dist_rank{r}.json').read_text()) for r in (0, 1)]
    for rank, view in enumerate(seen):
        assert view == dict(rank=rank, world_size=2, wrapped=True, master_addr='127.0.0.1',
                            master_port=str(port), iter=4)
    _assert_same(_weights(work_dir, 0), _weights(work_dir, 1))
    # Rank 0 wrote the checkpoints, and the last two iterations changed the weights.
    checkpoint = torch.load(work_dir / 'iter_4.pth', weights_only=False)
    assert len(checkpoint['rng_states']) == 2  # both ranks' generators, for an exact resume
    final = checkpoint['state_dict']
    halfway = torch.load(work_dir / 'iter_2.pth', weights_only=False)['state_dict']
    _assert_same(final, _weights(work_dir, 0))
    assert _differing(halfway, final)


def test_distributed_resume_continues_exactly(tiny):
    tmp, data, config, full_dir, _ = tiny
    stopping = write_config(
        tmp / 'tiny_stopping.py', str(data), imports=['fec_mm', 'recording_hooks'],
        extra="custom_hooks = [dict(type='SaveRankWeightsHook'), "
              "dict(type='StopTrainingHook', iters=2)]\n")
    work_dir = tmp / 'resumed'
    # One node of two processes this time: the same two ranks.
    _dist_train(tmp, stopping, work_dir, nnodes=1, nproc=2)
    assert not (work_dir / 'iter_4.pth').exists()
    _dist_train(tmp, config, work_dir, 1, 2, '--resume')
    for rank in (0, 1):
        _assert_same(_weights(full_dir, rank), _weights(work_dir, rank))


def test_dist_test_gathers_the_predictions_of_both_processes(tmp_path):
    data = write_images(tmp_path / 'data', per_class=4)
    config = write_test_config(tmp_path / 'tiny.py', str(data))
    checkpoint = write_dog_checkpoint(config, tmp_path / 'dog.pth')
    out = tmp_path / 'preds.pkl'
    _dist_run('dist_test.sh', tmp_path, [config, checkpoint], tmp_path / 'work', 1, 2,
              '--out', str(out))
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert sorted(p['sample_idx'] for p in predictions) == list(range(8))
    assert all(int(p['pred_label']) == 1 for p in predictions)


@pytest.mark.parametrize('signal_name', ['SIGSTOP', 'SIGKILL'])
def test_a_frozen_or_dead_peer_fails_the_run_within_the_timeout(tmp_path, signal_name):
    """Rank 1 freezes (SIGSTOP) or dies (SIGKILL) after its second iteration:
    the launcher ends with an error, within env_cfg.dist_cfg.timeout
    (default 600 s, 10 here) for a frozen peer, instead of waiting 30 min."""
    data = write_images(tmp_path / 'data', per_class=4)
    hooks = (f"custom_hooks = [dict(type='FreezeRankHook', rank=1, iters=2, "
             f"signal={signal_name!r})]\n")
    config = write_config(tmp_path / 'tiny.py', str(data), imports=['fec_mm', 'recording_hooks'],
                          extra=hooks)
    start = time.monotonic()
    codes, log = _dist_run('dist_train.sh', tmp_path, [config], tmp_path / 'work', 1, 2,
                           '--cfg-options', 'env_cfg.dist_cfg.timeout=10',
                           'train_cfg.max_iters=6', expect_success=False)
    elapsed = time.monotonic() - start
    assert codes[0] != 0, log[-3000:]
    if signal_name == 'SIGSTOP':
        assert 'Timed out waiting 10000ms' in log, log[-3000:]
    else:
        assert 'exitcode  : -9 (pid' in log, log[-3000:]
    assert elapsed < TIME_LIMIT_S


def test_a_killed_node_launcher_does_not_hold_node_0(tmp_path):
    """Node 1's launcher is SIGKILLed mid-run while its worker trains on: both
    ranks finish, and node 0's launcher ends after the exit barrier
    (EXIT_BARRIER_TIMEOUT, default 60 s, 5 here) instead of torchrun's 300 s."""
    data = write_images(tmp_path / 'data', per_class=4)
    hooks = ("custom_hooks = [dict(type='SaveRankWeightsHook'), "
             "dict(type='KillLauncherHook', rank=1, iters=2)]\n")
    config = write_config(tmp_path / 'tiny.py', str(data), imports=['fec_mm', 'recording_hooks'],
                          extra=hooks)
    work_dir = tmp_path / 'work'
    os.environ['EXIT_BARRIER_TIMEOUT'] = '5'
    try:
        codes, log = _dist_run('dist_train.sh', tmp_path, [config], work_dir, 2, 1,
                               expect_success=False)
    finally:
        del os.environ['EXIT_BARRIER_TIMEOUT']
    assert codes == [0, -9], log[-3000:]
    assert 'Error waiting on exit barrier. Elapsed: 5.' in log, log[-3000:]
    _assert_same(_weights(work_dir, 0), _weights(work_dir, 1))
