"""Testing entry point behind ``tools/test.py``: mmdet 3.x's arguments and
behaviour for mmdet, mmseg and mmpretrain configs (``default_scope``
decides)."""
import argparse
import os.path as osp
import re
from typing import Optional, Sequence

from mmengine.config import Config
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from .checkpoint_loader import load_from_trusted_local, register_trusted_local_loader
from .cli import (
    add_common_args,
    build_runner,
    finish_distributed,
    load_config,
    setup_distributed,
)
from .data_checks import check_data_paths


def build_test_parser() -> argparse.ArgumentParser:
    """The arguments of ``tools/test.py``."""
    parser = argparse.ArgumentParser(description='Test (and evaluate) a model (mmdet, mmseg '
                                     'or mmpretrain config; its default_scope decides)')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump the predictions to this pickle file (.pkl)')
    add_common_args(parser)
    return parser


def build_test_config(args: argparse.Namespace) -> Config:
    """The config of a test run; checks checkpoint, ``--out`` and data paths.

    Raises:
        FileNotFoundError: Config, checkpoint, data root or annotation file
            missing.
        ValueError: ``--out`` is not a .pkl/.pickle file.
    """
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {args.checkpoint}')
    cfg = load_config(args)
    cfg.load_from = args.checkpoint
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must name a .pkl or .pickle file, got {args.out}')
        # mmengine's DumpResults, next to the config's own metrics.
        evaluators = cfg.get('test_evaluator') or []
        if not isinstance(evaluators, (list, tuple)):
            evaluators = [evaluators]
        cfg.test_evaluator = list(evaluators) + [dict(type='DumpResults', out_file_path=args.out)]
    check_data_paths(cfg, ('test_dataloader',))
    return cfg


def check_checkpoint_fits(runner: Runner, filename: str) -> None:
    """Fail if the checkpoint lacks weights of the model.

    mmengine loads ``load_from`` non-strictly and only warns, which would
    evaluate randomly initialised weights. Keys the model does not have are
    left to mmengine's warning.

    Raises:
        ValueError: Names the file, the number of missing weights and a few
            of them.
    """
    checkpoint = load_from_trusted_local(filename, map_location='cpu')
    if not isinstance(checkpoint, dict):
        raise ValueError(f'checkpoint {filename} holds a {type(checkpoint).__name__}, '
                         'not a dict of weights')
    state_dict = checkpoint.get('state_dict', checkpoint)
    keys = {re.sub(r'^module\.', '', k) for k in state_dict}
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    missing = sorted(set(model.state_dict()) - keys)
    if missing:
        raise ValueError(f'checkpoint {filename} lacks {len(missing)} of the model\'s '
                         f'{len(model.state_dict())} weights (another model or config?), '
                         f'e.g. {missing[:5]}')


def test(args: argparse.Namespace) -> dict:
    """Test as ``tools/test.py`` does.

    Args:
        args (argparse.Namespace): Parsed by :func:`build_test_parser`.

    Returns:
        dict: The metrics of ``runner.test()``.
    """
    register_trusted_local_loader()
    cfg = build_test_config(args)
    setup_distributed(cfg, args)
    runner = build_runner(cfg)
    if '://' not in args.checkpoint:
        check_checkpoint_fits(runner, args.checkpoint)
    metrics = runner.test()
    finish_distributed()
    return metrics


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: ``tools/test.py CONFIG CHECKPOINT [options]``."""
    test(build_test_parser().parse_args(argv))
