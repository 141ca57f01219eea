"""Finding the FEC backbone of a model through the wrappers around it.

Runners hand hooks the model as they run it: wrapped for distributed
training (``MMDistributedDataParallel``, ``MMFullyShardedDataParallel``, ...)
or for test-time augmentation (``DetTTAModel``, ``SegTTAModel``, any
``mmengine.model.BaseTTAModel``). All of these keep the model they wrap in
``.module``.
"""
from typing import Optional

import torch.nn as nn
from mmengine.model import BaseTTAModel, is_model_wrapper

from .fec import FEC


def unwrap_model(model: nn.Module) -> nn.Module:
    """The innermost model under model wrappers and TTA models."""
    while is_model_wrapper(model) or isinstance(model, BaseTTAModel):
        model = model.module
    return model


def find_fec_backbone(model: nn.Module) -> Optional[FEC]:
    """The FEC of ``model``: the model itself or its ``backbone``, through
    wrappers (:func:`unwrap_model`); None if it has none."""
    model = unwrap_model(model)
    if isinstance(model, FEC):
        return model
    backbone = getattr(model, 'backbone', None)
    return backbone if isinstance(backbone, FEC) else None
