"""Training entry point behind ``tools/train.py``: mmdet 3.x's arguments and
behaviour, for mmdet, mmseg and mmpretrain configs (``default_scope``
decides), plus what the current stack needs (torch>=2.6 resume, CPU
distributed runs, exact resume of the random number generators)."""
import argparse
import logging
import os
import os.path as osp
from contextlib import nullcontext
from typing import Optional, Sequence

import torch
from mmengine.config import Config
from mmengine.logging import print_log
from mmengine.runner import Runner

from ..checkpoints import AtomicCheckpointHook, find_resumable_checkpoint, load_checkpoint_file
from ..checkpoints.atomic_save import check_resumable
from ..models.whole_model import backbone_only_loading
from .cli import (
    add_common_args,
    build_runner,
    finish_distributed,
    load_config,
    setup_distributed,
)
from .data_checks import check_data_paths, check_images_decode, check_listed_files_exist
from .rng_state_hook import RngStateHook
from .testing import check_checkpoint_fits
from .training_guards import FinalValidationHook, NonFiniteLossHook, WorkDirLock


def build_train_parser() -> argparse.ArgumentParser:
    """The arguments of ``tools/train.py``."""
    parser = argparse.ArgumentParser(description='Train a model (mmdet, mmseg or mmpretrain '
                                     'config; its default_scope decides)')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true', default=False,
                        help='enable automatic mixed precision training (needs CUDA)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the learning rate by the actual batch size over '
                        'auto_scale_lr.base_batch_size')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from CKPT, or without a value from the latest '
                        'checkpoint in the work dir')
    parser.add_argument('--check-images', action='store_true',
                        help='before training, read and decode every image (and '
                        'segmentation map) the train/val datasets list, naming the bad ones')
    add_common_args(parser)
    return parser


def _check_amp_possible(what: str) -> None:
    if not torch.cuda.is_available():
        raise RuntimeError(f'{what}: mixed precision training (AmpOptimWrapper) needs a CUDA '
                           'GPU and this machine has none; train without it on CPU')


def build_train_config(args: argparse.Namespace) -> Config:
    """The config of a training run: file, ``--cfg-options``, work dir,
    ``--amp``, ``--auto-scale-lr``, ``--resume``, and the RNG state hook.

    Checks the data paths and the resume checkpoint; writes nothing.

    Raises:
        FileNotFoundError: Config, data root, annotation file or resume
            checkpoint missing.
        ValueError: ``--amp`` or ``--auto-scale-lr`` do not fit the config.
        RuntimeError: ``--amp`` (or an AmpOptimWrapper) without CUDA.
    """
    cfg = load_config(args)

    wrapper_type = cfg.get('optim_wrapper', {}).get('type', 'OptimWrapper')
    if args.amp:
        if wrapper_type == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in your config.', logger='current',
                      level=logging.WARNING)
        elif wrapper_type != 'OptimWrapper':
            raise ValueError('--amp is only supported when optim_wrapper.type is '
                             f'OptimWrapper, but the config has {wrapper_type}')
        _check_amp_possible('--amp')
        cfg.optim_wrapper.type = 'AmpOptimWrapper'
        cfg.optim_wrapper.loss_scale = 'dynamic'
    elif wrapper_type == 'AmpOptimWrapper':
        _check_amp_possible('optim_wrapper.type=AmpOptimWrapper in the config')

    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            raise ValueError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the '
                             'config (the total batch size its learning rate was set for), '
                             'e.g. auto_scale_lr = dict(base_batch_size=16)')
        cfg.auto_scale_lr.enable = True

    if args.resume == 'auto':
        # The newest complete checkpoint, whatever last_checkpoint says
        # (stale, empty, or the absolute path of a moved work dir).
        cfg.resume = True
        cfg.load_from = find_resumable_checkpoint(cfg.work_dir)
        if cfg.load_from is None:
            print_log(f'--resume: no complete checkpoint in {cfg.work_dir}; training from '
                      'the start', logger='current', level=logging.WARNING)
    elif args.resume is not None:
        if '://' not in args.resume:
            if not osp.isfile(args.resume):
                raise FileNotFoundError(f'--resume: checkpoint not found: {args.resume}')
            check_resumable(args.resume)  # names the file, not a bare KeyError 'epoch'
        cfg.resume = True
        cfg.load_from = args.resume

    checkpoint_hook = (cfg.get('default_hooks') or {}).get('checkpoint')
    if isinstance(checkpoint_hook, dict) and checkpoint_hook.get('type') == 'CheckpointHook':
        checkpoint_hook['type'] = AtomicCheckpointHook.__name__  # crash-safe saves

    hooks = list(cfg.get('custom_hooks') or [])
    types = {h.get('type') for h in hooks if isinstance(h, dict)}
    guards = (RngStateHook, NonFiniteLossHook, FinalValidationHook)
    added = [dict(type=hook.__name__) for hook in guards if hook.__name__ not in types]
    if added:
        cfg.custom_hooks = hooks + added
        # The config dumped to the work dir then also builds with other tools.
        custom_imports = dict(cfg.get('custom_imports') or dict(allow_failed_imports=False))
        imports = custom_imports.get('imports', [])
        imports = [imports] if isinstance(imports, str) else list(imports)
        if __package__ not in imports:
            custom_imports['imports'] = imports + [__package__]
            cfg.custom_imports = custom_imports

    backbone_only = cfg.get('load_from_backbone_only', False)
    if not isinstance(backbone_only, bool):
        raise ValueError('load_from_backbone_only must be True or False, got '
                         f'{backbone_only!r}')
    if backbone_only and (cfg.get('resume') or not cfg.get('load_from')):
        raise ValueError('load_from_backbone_only=True starts the FEC backbone from '
                         '`load_from` and needs a load_from without --resume (a resumed run '
                         'loads the whole model)')

    # The Runner builds the validation loop only when val_cfg is set.
    used = ['train_dataloader'] + (['val_dataloader'] if cfg.get('val_cfg') is not None else [])
    check_data_paths(cfg, used)
    check_listed_files_exist(cfg, used)
    if getattr(args, 'check_images', False):
        count = check_images_decode(cfg, used)
        print_log(f'--check-images: all {count} image files decode', logger='current')
    return cfg


def use_resumed_seed(cfg: Config) -> None:
    """A resumed run without ``randomness.seed`` takes the checkpoint's seed
    from the start.

    mmengine re-seeds from the checkpoint only after the dataloaders were
    built, so their sampler and worker seeds would come from a new random
    seed and the data order would differ from the interrupted run.

    Args:
        cfg (Config): Changed in place.
    """
    if not cfg.get('resume') or cfg.get('randomness', {}).get('seed') is not None:
        return
    path = cfg.get('load_from')
    if path is None or '://' in path:
        return
    checkpoint = load_checkpoint_file(path, map_location='cpu')
    seed = checkpoint.get('meta', {}).get('seed') if isinstance(checkpoint, dict) else None
    if seed is not None:
        cfg.randomness = dict(cfg.get('randomness') or {}, seed=seed)
        print_log(f'resuming: seed {seed} of {path}', logger='current')


def train(args: argparse.Namespace) -> Runner:
    """Train as ``tools/train.py`` does.

    Args:
        args (argparse.Namespace): Parsed by :func:`build_train_parser`.

    Returns:
        Runner: The runner after training (``runner.model`` holds the
        final weights).
    """
    cfg = build_train_config(args)
    use_resumed_seed(cfg)
    lock = WorkDirLock(cfg.work_dir)
    if int(os.environ.get('RANK', '0')) == 0:
        lock.acquire()
    try:
        setup_distributed(cfg, args)
        runner = build_runner(cfg)
        load_from = cfg.get('load_from')
        backbone_only = cfg.get('load_from_backbone_only', False)
        with backbone_only_loading() if backbone_only else nullcontext():
            if load_from and '://' not in load_from:
                # --resume: the whole model must fit; load_from (fine-tuning)
                # may change the shapes of heads (mmengine warns), but not
                # the backbone, and must hold every part of the model unless
                # load_from_backbone_only is set.
                check_checkpoint_fits(runner, load_from,
                                      allow_other_shapes=not cfg.get('resume'))
            runner.train()
        finish_distributed()
    finally:
        lock.release()
    return runner


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Command line: ``tools/train.py CONFIG [options]``."""
    train(build_train_parser().parse_args(argv))
