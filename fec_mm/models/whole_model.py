"""Loading a whole model that holds an FEC or Context Clusters backbone from
one checkpoint.

Every library API that loads a checkpoint file into a model (mmdet's
``init_detector`` / ``DetInferencer``, mmseg's ``init_model`` /
``MMSegInferencer``, mmpretrain's ``get_model`` / inferencers, the Runner's
``load_from`` and ``resume``, ``tools/test.py``) ends in mmengine's
``load_state_dict(model, state_dict)``, which loads non-strictly and only
warns about missing keys: a classification checkpoint loaded into Mask
R-CNN predicts with a random neck and random heads. :func:`install`
(called by ``import fec_mm``) wraps that one function; for models that
contain an FEC or ContextCluster backbone (others are untouched) it

1. refuses a file of the other family and converts the authors'
   whole-model files of the model's family
   (:func:`fec_mm.models.families.convert_authors_whole_model`) before
   anything checks them, so they load as they were released;
2. refuses a checkpoint that lacks whole sub-modules of the model (neck,
   heads, ...), naming the file and the parts (:func:`check_whole_model`).

A backbone-only start stays available where the user asks for it: the
backbone's ``init_cfg=dict(type='Pretrained', ...)`` (which does not pass
through here), and ``load_from`` with ``load_from_backbone_only = True`` in
the config (honoured by ``tools/train.py`` through
:func:`backbone_only_loading`).
"""
import threading
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List

import torch.nn as nn
from mmengine.logging import MMLogger
from torch import Tensor

from ..checkpoints.safe_load import last_read_file
from .families import backbones_of, check_backbones_fit, convert_authors_whole_model
from .unwrap import unwrap_model

_state = threading.local()


@contextmanager
def backbone_only_loading() -> Iterator[None]:
    """Within this context (one thread), a checkpoint that holds the
    backbone (FEC or ContextCluster) but lacks other parts of the model
    loads with a warning instead of an error (``load_from_backbone_only =
    True``)."""
    previous = getattr(_state, 'backbone_only', False)
    _state.backbone_only = True
    try:
        yield
    finally:
        _state.backbone_only = previous


def fec_prefixes(model: nn.Module) -> List[str]:
    """Key prefixes of the FEC and ContextCluster modules inside ``model``
    (e.g. 'backbone.'); empty when the model holds none or is one itself."""
    return [prefix for prefix, _ in backbones_of(model)]


def missing_parts(model: nn.Module, keys: List[str]) -> List[str]:
    """The top-most sub-modules of ``model`` that hold state (parameters,
    persistent buffers) none of which is among ``keys``."""
    present = set(keys)
    own = [k for k in model.state_dict() if not k.endswith('num_batches_tracked')]
    found = []

    def walk(module: nn.Module, prefix: str) -> None:
        for name, child in module.named_children():
            path = prefix + name + '.'
            under = [k for k in own if k.startswith(path)]
            if not under:
                continue
            if not any(k in present for k in under):
                found.append(path[:-1])
            else:
                walk(child, path)

    walk(model, '')
    return found


def check_whole_model(model: nn.Module, state_dict: Dict[str, Tensor], source: str) -> None:
    """Fail when ``state_dict`` lacks whole sub-modules of ``model``.

    Under :func:`backbone_only_loading`, a state dict that holds the
    backbone's weights is accepted and the parts left at their
    initialisation are logged.

    Args:
        model (nn.Module): The whole model (not a wrapper).
        state_dict (dict): Its weights, in fec-mm's names.
        source (str): The file, for the message.

    Raises:
        ValueError: Names the file, the missing parts and what to do; for
            a backbone of another arch, the arch the file holds
            (:func:`fec_mm.models.families.check_backbones_fit`).
    """
    check_backbones_fit(model, state_dict)  # another arch: say so, not its missing blocks
    backbones = backbones_of(model)
    prefixes = [prefix for prefix, _ in backbones]
    parts = missing_parts(model, list(state_dict))
    if not parts:
        return
    has_backbone = any(k.startswith(p) for k in state_dict for p in prefixes)
    if getattr(_state, 'backbone_only', False) and has_backbone:
        MMLogger.get_current_instance().warning(
            f'load_from_backbone_only: {source} holds no weights for {", ".join(parts)}; '
            'they keep their initialisation')
        return
    names = ' or '.join(sorted({family.name for _, family in backbones}))
    backbone = (f' It holds the {names} backbone: to start only the backbone from it, use '
                "model.backbone.init_cfg=dict(type='Pretrained', checkpoint=...) or, with "
                'tools/train.py, load_from plus load_from_backbone_only=True.'
                if has_backbone else '')
    raise ValueError(f'checkpoint {source} is not a whole {type(model).__name__}: it holds no '
                     f'weights for {", ".join(parts)} (a checkpoint of another task or model?); '
                     f'these parts would predict with random weights.{backbone}')


def _describe_source() -> str:
    return last_read_file() or 'the state dict being loaded'


def fec_load_state_dict(original: Callable) -> Callable:
    """``original`` (mmengine's ``load_state_dict``) with the authors'
    layout converted and the whole-model check first, for models with an
    FEC or ContextCluster backbone."""

    def load_state_dict(module, state_dict, strict=False, logger=None):
        # Unwrapped as mmengine's load_state_dict unwraps: DDP and the other
        # wrappers, and TTA models (DetTTAModel, SegTTAModel), whose
        # ``module`` takes the file's keys.
        model = unwrap_model(module)
        if not fec_prefixes(model):
            return original(module, state_dict, strict, logger)
        source = _describe_source()
        converted, layout, reshaped = convert_authors_whole_model(
            model, state_dict, last_read_file() or '')
        if layout is not None:
            metadata = getattr(state_dict, '_metadata', None)
            if metadata is not None:
                converted._metadata = metadata
            MMLogger.get_current_instance().info(
                f'{source}: the authors\' {layout}; {len(converted)} tensors loaded under '
                'fec-mm\'s names (backbone keys converted)')
            if reshaped:
                MMLogger.get_current_instance().warning(
                    f'{source}: {len(reshaped)} MLP weights were 1x1 convolutions (the '
                    "authors' older dense checkpoints, their issue #31) and were reshaped to "
                    f'nn.Linear (out, in), e.g. {reshaped[0]}')
        check_whole_model(model, converted, source)
        return original(module, converted, strict, logger)

    load_state_dict.fec_mm_wrapped = original
    return load_state_dict


def install() -> None:
    """Wrap ``mmengine.runner.checkpoint.load_state_dict`` (what
    ``load_checkpoint``, ``Runner.load_checkpoint``, the strategies and the
    inferencers all call through ``_load_checkpoint_to_model``). Idempotent."""
    from mmengine.runner import checkpoint
    if not hasattr(checkpoint.load_state_dict, 'fec_mm_wrapped'):
        checkpoint.load_state_dict = fec_load_state_dict(checkpoint.load_state_dict)
