"""Distributed set-up for machines without CUDA: CPU processes and gloo.

mmengine's ``init_dist`` calls ``torch.cuda.set_device`` (and its slurm
launcher divides by the GPU count), so on a machine without GPUs the tools
start the gloo process group themselves, before the Runner is built: the
Runner then sees ``is_distributed()`` and skips ``init_dist``. Rank and world
size come from the launcher's environment, as mmengine reads them.
"""
import os
import re
from datetime import timedelta
from typing import Callable, Dict, Mapping, Optional

import torch.distributed as torch_dist
from mmengine.config import Config
from mmengine.dist import is_distributed
from mmengine.logging import MMLogger
from mmengine.registry import MODEL_WRAPPERS
from torch.nn.parallel import DistributedDataParallel

DEFAULT_PORT = '29500'
DistEnv = Dict[str, str]


def _require(environ: Mapping[str, str], names, launcher: str, how: str) -> None:
    missing = [name for name in names if name not in environ]
    if missing:
        raise RuntimeError(f'--launcher {launcher} needs the environment variables '
                           f'{", ".join(missing)}; {how}')


def pytorch_dist_env(environ: Mapping[str, str]) -> DistEnv:
    """Rank, world size and rendezvous of a torchrun process.

    Args:
        environ (Mapping[str, str]): The process environment.

    Returns:
        dict: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
        ``MASTER_PORT``.
    """
    _require(environ, ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT'), 'pytorch',
             'start it through torchrun, e.g. tools/dist_train.sh')
    return dict(RANK=environ['RANK'], WORLD_SIZE=environ['WORLD_SIZE'],
                LOCAL_RANK=environ.get('LOCAL_RANK', '0'), MASTER_ADDR=environ['MASTER_ADDR'],
                MASTER_PORT=environ['MASTER_PORT'])


def slurm_first_host(nodelist: str) -> str:
    """First host name of a slurm node list, as ``scontrol show hostnames``
    would print it first.

    Args:
        nodelist (str): e.g. ``'gpu[03-05,9],cpu1'`` or ``'rack[1-2]-n[01-04]'``.

    Returns:
        str: e.g. ``'gpu03'`` or ``'rack1-n01'``.
    """
    depth, end = 0, len(nodelist)
    for i, char in enumerate(nodelist):
        depth += {'[': 1, ']': -1}.get(char, 0)
        if char == ',' and depth == 0:
            end = i
            break
    first = nodelist[:end].strip()
    # In each bracket keep the first entry of the first range: 'n[01-04,7]' -> 'n01'.
    host = re.sub(r'\[([^\],\-]+)[^\]]*\]', r'\1', first)
    if not host or any(c in host for c in '[],'):
        raise ValueError(f'cannot read the first host of SLURM_NODELIST={nodelist!r}')
    return host


def slurm_dist_env(environ: Mapping[str, str],
                   first_host: Callable[[str], str] = slurm_first_host) -> DistEnv:
    """Rank, world size and rendezvous of an srun task, as mmengine's slurm
    launcher derives them, without the GPU count.

    ``MASTER_ADDR`` defaults to the first host of ``SLURM_NODELIST`` and
    ``MASTER_PORT`` to 29500; both can be set in the environment.

    Args:
        environ (Mapping[str, str]): The process environment.
        first_host (callable): Maps ``SLURM_NODELIST`` to the master host.

    Returns:
        dict: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
        ``MASTER_PORT``.
    """
    _require(environ, ('SLURM_PROCID', 'SLURM_NTASKS', 'SLURM_NODELIST'), 'slurm',
             'start it through srun, e.g. tools/slurm_train.sh')
    return dict(RANK=environ['SLURM_PROCID'], WORLD_SIZE=environ['SLURM_NTASKS'],
                LOCAL_RANK=environ.get('SLURM_LOCALID', '0'),
                MASTER_ADDR=environ.get('MASTER_ADDR') or first_host(environ['SLURM_NODELIST']),
                MASTER_PORT=environ.get('MASTER_PORT', DEFAULT_PORT))


def mpi_dist_env(environ: Mapping[str, str]) -> DistEnv:
    """Rank, world size and rendezvous of an Open MPI process (as mmengine's
    mpi launcher: ``MASTER_ADDR`` must be set, ``MASTER_PORT`` defaults to 29500).

    Args:
        environ (Mapping[str, str]): The process environment.

    Returns:
        dict: ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
        ``MASTER_PORT``.
    """
    _require(environ, ('OMPI_COMM_WORLD_RANK', 'OMPI_COMM_WORLD_SIZE', 'MASTER_ADDR'), 'mpi',
             'start it through mpirun and export MASTER_ADDR')
    return dict(RANK=environ['OMPI_COMM_WORLD_RANK'], WORLD_SIZE=environ['OMPI_COMM_WORLD_SIZE'],
                LOCAL_RANK=environ.get('OMPI_COMM_WORLD_LOCAL_RANK', '0'),
                MASTER_ADDR=environ['MASTER_ADDR'],
                MASTER_PORT=environ.get('MASTER_PORT', DEFAULT_PORT))


DIST_ENV_READERS = dict(pytorch=pytorch_dist_env, slurm=slurm_dist_env, mpi=mpi_dist_env)


def init_cpu_distributed(launcher: str, timeout: Optional[timedelta] = None) -> None:
    """Start a gloo process group from the launcher's environment.

    Exports the derived ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
    ``MASTER_ADDR`` and ``MASTER_PORT`` (as mmengine's launchers do) and does
    nothing if a process group exists already.

    Args:
        launcher (str): 'pytorch', 'slurm' or 'mpi'.
        timeout (timedelta, optional): Collective timeout. Default 30 min.
    """
    if launcher not in DIST_ENV_READERS:
        raise ValueError(f'unknown launcher {launcher!r}; valid ones are '
                         f'{sorted(DIST_ENV_READERS)}')
    if is_distributed():
        return
    env = DIST_ENV_READERS[launcher](os.environ)
    os.environ.update(env)
    torch_dist.init_process_group(backend='gloo', init_method='env://',
                                  rank=int(env['RANK']), world_size=int(env['WORLD_SIZE']),
                                  timeout=timeout or timedelta(minutes=30))
    MMLogger.get_current_instance().info(
        f'no CUDA device: distributed training on CPU with gloo, rank {env["RANK"]} of '
        f'{env["WORLD_SIZE"]} (master {env["MASTER_ADDR"]}:{env["MASTER_PORT"]})')


def use_cpu_model_wrapper(cfg: Config) -> None:
    """Make the Runner's DDP wrapper work on CPU (``device_ids=None``).

    mmengine's ``Runner.wrap_model`` passes ``device_ids=[LOCAL_RANK]`` to DDP
    wrappers, which DDP rejects for CPU modules; values given in
    ``model_wrapper_cfg`` take precedence over that default. A config
    without ``model_wrapper_cfg`` gets mmengine's default wrapper.

    Args:
        cfg (Config): Changed in place.
    """
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = dict(
            type='MMDistributedDataParallel', broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False), device_ids=None)
        return
    # Runner.wrap_model defaults the type to MMDistributedDataParallel too.
    wrapper_type = wrapper.get('type', 'MMDistributedDataParallel')
    if isinstance(wrapper_type, str):
        wrapper_type = MODEL_WRAPPERS.get(wrapper_type)
    if isinstance(wrapper_type, type) and issubclass(wrapper_type, DistributedDataParallel):
        wrapper['device_ids'] = None
