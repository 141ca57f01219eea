"""Training and testing entry points behind ``tools/train.py`` and ``tools/test.py``.

Not imported by ``import fec_mm``: the CPU distributed set-up changes
global state, so only the tools' code path (and tests) bring it in.
Importing this package needs mmengine alone; the config's
``default_scope`` decides which of mmdet, mmseg or mmpretrain runs.
"""
from .data_checks import check_data_paths, check_images_decode
from .launch import init_cpu_distributed, mpi_dist_env, slurm_dist_env, slurm_first_host
from .rng_state_hook import RngStateHook
from .testing import build_test_parser, test
from .training import build_train_parser, train
from .training_guards import FinalValidationHook, NonFiniteLossHook, WorkDirLock

__all__ = [
    'FinalValidationHook', 'NonFiniteLossHook', 'RngStateHook', 'WorkDirLock', 'build_test_parser',
    'build_train_parser', 'check_data_paths', 'check_images_decode', 'init_cpu_distributed',
    'mpi_dist_env',
    'slurm_dist_env', 'slurm_first_host', 'test', 'train'
]
