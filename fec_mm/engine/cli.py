"""Arguments and config handling shared by the train and test entry points
(mmdet 3.x's ``tools/train.py`` and ``tools/test.py`` conventions)."""
import argparse
import os
import os.path as osp
from datetime import timedelta

import torch
import torch.distributed as torch_dist
from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from .launch import init_cpu_distributed, use_cpu_model_wrapper

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi')
# Seconds a collective waits for a missing peer (env_cfg.dist_cfg.timeout).
# Longer than any legitimate wait of a rank for rank 0 (saving a checkpoint,
# computing COCO metrics), far shorter than torch's 30 minutes.
DEFAULT_DIST_TIMEOUT = 600


def add_common_args(parser: argparse.ArgumentParser) -> None:
    """``--work-dir``, ``--cfg-options``, ``--launcher``, ``--local_rank``."""
    parser.add_argument('--work-dir', help='the dir to save logs and models '
                        '(default: ./work_dirs/<config file name>)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, as key=value pairs, e.g. '
        'train_cfg.max_iters=100 or key="[a,b]"; no white space in a value')
    parser.add_argument('--launcher', choices=LAUNCHERS, default='none', help='job launcher')
    # torch.distributed.launch passes --local-rank (torch>=2.0) or --local_rank.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def load_config(args: argparse.Namespace) -> Config:
    """Read the config and apply ``--cfg-options``, ``--launcher`` and
    ``--work-dir`` (CLI > ``work_dir`` in the file > config file name)."""
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(args.config))[0])
    return cfg


def setup_distributed(cfg: Config, args: argparse.Namespace) -> None:
    """Prepare a distributed run; on machines without CUDA start gloo.

    With CUDA, mmengine's Runner starts the process group itself
    (``env_cfg.dist_cfg``). Without CUDA, the group is started here and the
    DDP wrapper is told to use no device ids (CPU processes).
    """
    if args.launcher == 'none':
        return
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    # A peer that dies or freezes fails the others' next collective after
    # this many seconds (torch's default would be 30 minutes).
    env_cfg = cfg.setdefault('env_cfg', {})
    dist_cfg = env_cfg.setdefault('dist_cfg', {})
    timeout = dist_cfg.setdefault('timeout', DEFAULT_DIST_TIMEOUT)
    if torch.cuda.is_available():
        return  # mmengine's init_dist starts the group with dist_cfg
    init_cpu_distributed(args.launcher, timedelta(seconds=timeout))
    use_cpu_model_wrapper(cfg)


def finish_distributed() -> None:
    """Wait for every rank, then close the process group.

    Without this, a rank that is done (rank 1, say) exits while another still
    works (rank 0 saving the last checkpoint); the gloo threads of the rank
    left behind then lose their peer and abort the process ("terminate called
    without an active exception"), failing a run that had succeeded.
    """
    if torch_dist.is_available() and torch_dist.is_initialized():
        torch_dist.barrier()
        torch_dist.destroy_process_group()


def build_runner(cfg: Config) -> Runner:
    """``Runner.from_cfg`` unless the config names a ``runner_type``."""
    if 'runner_type' not in cfg:
        return Runner.from_cfg(cfg)
    return RUNNERS.build(cfg)
