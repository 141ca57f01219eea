"""Testing entry point behind ``tools/test.py``: mmdet 3.x's arguments and
behaviour for mmdet, mmseg and mmpretrain configs (``default_scope``
decides)."""
import argparse
import os.path as osp
import re
from typing import Optional, Sequence

from mmengine.config import Config
from mmengine.runner import Runner

from ..checkpoints import load_checkpoint_file, state_dict_of
from ..models.families import backbones_of, convert_authors_whole_model, describe_archs
from ..models.unwrap import unwrap_model
from ..models.whole_model import check_whole_model, missing_parts
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


def check_checkpoint_fits(runner: Runner, filename: str, allow_other_shapes: bool = False,
                          prefix: str = '') -> None:
    """Fail if the checkpoint's weights do not fit the runner's model.

    mmengine loads ``load_from`` non-strictly and only warns, which would
    evaluate (or resume) randomly initialised or mis-shaped weights. Keys
    the model does not have are left to mmengine's warning.

    Args:
        runner (Runner): Built, before it loads the checkpoint.
        filename (str): The local checkpoint.
        allow_other_shapes (bool): Accept missing and mis-shaped tensors as
            long as some weights are shared (fine-tuning with ``load_from``
            into a model with other heads). Default False. For models with
            an FEC or ContextCluster backbone, whole parts (neck, heads) are never optional
            unless :func:`fec_mm.models.whole_model.backbone_only_loading`
            is active (``load_from_backbone_only``).
        prefix (str): Compare only the checkpoint's weights under this
            prefix (stripped) with the model's, e.g. ``'backbone.'`` when
            ``runner.model`` is a backbone. Default '' (all).

    Raises:
        FileNotFoundError, fec_mm.checkpoints.CheckpointError: The file is
            missing or unusable (truncated, corrupted, non-finite, ...).
        ValueError: Names the file and the first missing or mis-shaped
            weights.
    """
    checkpoint = load_checkpoint_file(filename, map_location='cpu')
    state_dict = {re.sub(r'^module\.', '', k): v for k, v in state_dict_of(checkpoint).items()}
    state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    model = unwrap_model(runner.model)
    ours = bool(backbones_of(model))
    if ours:  # as the load will see it: the other family refused, the authors' files converted
        state_dict, _, _ = convert_authors_whole_model(model, state_dict, filename)
    own = model.state_dict()
    shared = [k for k in own if k in state_dict]
    if not shared:
        raise ValueError(f'checkpoint {filename} shares no weight with the model (another '
                         f'model?); its first keys: {list(state_dict)[:5]}')
    mismatched = [f'{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}'
                  for k in shared if state_dict[k].shape != own[k].shape]
    if mismatched and not allow_other_shapes:
        archs = describe_archs(model, state_dict)
        raise ValueError(f'checkpoint {filename}: {len(mismatched)} weights have other shapes '
                         f'than the model\'s (checkpoint vs model; another arch or config?), '
                         f'e.g. {mismatched[:3]}{archs}')
    missing = [k for k in own if k not in state_dict]
    if missing and not allow_other_shapes:
        parts = missing_parts(model, list(state_dict))
        parts = f'; parts without any weight: {", ".join(parts)}' if parts else ''
        raise ValueError(f'checkpoint {filename} lacks {len(missing)} of the model\'s '
                         f'{len(own)} weights (another model or config?), e.g. {missing[:5]}'
                         f'{parts}')
    if ours:  # fine-tuning too: no whole part (neck, heads) without weights; the arch
        check_whole_model(model, state_dict, filename)


def test(args: argparse.Namespace) -> dict:
    """Test as ``tools/test.py`` does.

    Args:
        args (argparse.Namespace): Parsed by :func:`build_test_parser`.

    Returns:
        dict: The metrics of ``runner.test()``.
    """
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
