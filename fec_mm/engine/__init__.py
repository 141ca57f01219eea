"""Training and testing entry points behind ``tools/train.py`` and ``tools/test.py``.

Not imported by ``import fec_mm``: the checkpoint loader and the CPU
distributed set-up change global state, so only the tools' code path (and
tests) bring them in. Importing this package needs mmengine alone; the
config's ``default_scope`` decides which of mmdet, mmseg or mmpretrain runs.
"""
from .checkpoint_loader import load_from_trusted_local, register_trusted_local_loader
from .data_checks import check_data_paths
from .launch import init_cpu_distributed, mpi_dist_env, slurm_dist_env, slurm_first_host
from .rng_state_hook import RngStateHook
from .testing import build_test_parser, test
from .training import build_train_parser, train

__all__ = [
    'RngStateHook', 'build_test_parser', 'build_train_parser', 'check_data_paths',
    'init_cpu_distributed', 'load_from_trusted_local', 'mpi_dist_env',
    'register_trusted_local_loader', 'slurm_dist_env', 'slurm_first_host', 'test', 'train'
]
