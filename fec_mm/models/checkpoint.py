"""Loading FEC weights: our checkpoints and the authors' layout.

The authors' FEC checkpoints (see ``shared/reference_checkpoint_keys_small.tsv``)
name the stages ``network.{0,2,4,6}``, the cluster poolings
``network.{1,3,5}`` (with their norm as ``norm2``), the classification norm
``norm`` and the dense-prediction norms ``norm{0,2,4,6}``.
"""
import re
from collections import OrderedDict
from typing import Dict, Optional

import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.runner import CheckpointLoader
from torch import Tensor

from ..checkpoints.safe_load import (
    CheckpointError,
    last_read_file,
    load_checkpoint_file,
    state_dict_of,
)

StateDict = Dict[str, Tensor]


def is_reference_layout(state_dict: StateDict) -> bool:
    """Whether keys follow the authors' ``network.{i}`` layout."""
    return any(key.startswith('network.') for key in state_dict)


def convert_reference_key(key: str) -> str:
    """Map one key of the authors' layout to ours (unknown keys unchanged)."""
    match = re.match(r'^network\.(\d+)\.(.*)$', key)
    if match:
        index, rest = int(match.group(1)), match.group(2)
        if index % 2 == 0:
            return f'stages.{index // 2}.{rest}'
        rest = re.sub(r'^norm2\.', 'norm.', rest)
        return f'cluster_poolings.{index // 2}.{rest}'
    match = re.match(r'^norm([0246])\.(.*)$', key)
    if match:
        return f'norm{int(match.group(1)) // 2}.{match.group(2)}'
    if key.startswith('norm.'):
        return 'norm3.' + key[len('norm.'):]
    if key.startswith('head.'):
        return 'head.fc.' + key[len('head.'):]
    return key


def convert_reference_state_dict(state_dict: StateDict) -> StateDict:
    """Convert an authors' state dict to our key names.

    Backbone keys come out without prefix; the classification head becomes
    ``head.fc.*`` (mmpretrain's ``LinearClsHead``).
    """
    return OrderedDict((convert_reference_key(k), v) for k, v in state_dict.items())


def read_state_dict(filename: str, map_location: str = 'cpu') -> StateDict:
    """Read a checkpoint file and return its tensors.

    Accepts weights under 'state_dict', 'model' or at the top level, and
    strips a DDP 'module.' prefix. Local files go through the checked,
    weights-only :func:`fec_mm.checkpoints.load_checkpoint_file`; URLs
    through mmengine's loaders.

    Raises:
        FileNotFoundError: A local file that does not exist.
        ValueError: The file is unusable or holds no state dict
            (:class:`fec_mm.checkpoints.CheckpointError`, naming the file).
    """
    if '://' in filename:
        checkpoint = CheckpointLoader.load_checkpoint(filename, map_location=map_location)
    else:
        checkpoint = load_checkpoint_file(filename, map_location=map_location)
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in state_dict_of(checkpoint).items())
    if not state_dict:
        raise CheckpointError(f'FEC checkpoint {filename} holds no tensors')
    return state_dict


def check_weights_fit(model: nn.Module, state_dict: StateDict, prefix: str = '') -> None:
    """Fail when the tensors under ``prefix`` are not this FEC's weights.

    Mis-shaped tensors (another arch) and a prefix whose keys are none of
    the model's (another backbone, or the authors' layout loaded without
    conversion) are errors; keys that are merely missing are left to the
    loader's report (e.g. the norms of a classification checkpoint loaded
    into a detector).

    Raises:
        ValueError: Names the file last read (if any), the arch and the
            first mismatches.
    """
    own = {prefix + k: v for k, v in model.state_dict().items()}
    ours = [k for k in state_dict if k.startswith(prefix)] if prefix else list(state_dict)
    if not ours:
        return
    source = last_read_file()
    source = f' (last checkpoint file read: {source})' if source else ''
    arch = f"FEC(arch='{getattr(model, 'arch_name', '?')}')"
    mismatched = [f'{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}'
                  for k in ours if k in own and state_dict[k].shape != own[k].shape]
    if mismatched:
        raise ValueError(f'{arch} cannot take these weights{source}: {len(mismatched)} tensors '
                         f'have other shapes (checkpoint vs model), e.g. {mismatched[:3]}; '
                         'a checkpoint of another FEC arch or another model?')
    if not any(k in own for k in ours):
        hint = (' They are in the authors\' layout: convert the file with '
                'tools/model_converters/fec_reference_to_mm.py, or load it with '
                "init_cfg=dict(type='Pretrained', ...)."
                if is_reference_layout({k[len(prefix):]: None for k in ours}) else '')
        raise ValueError(f'{arch} shares no weight with the state dict{source}: its '
                         f'{len(ours)} tensors under {prefix!r} are another model\'s, e.g. '
                         f'{ours[:3]}.{hint}')


def backbone_state_dict(state_dict: StateDict, prefix: Optional[str] = None) -> StateDict:
    """Keep the backbone's weights, in our key names.

    With ``prefix`` (e.g. 'backbone.'), keep only the keys under it. Without,
    use 'backbone.' if any key has it, else take all keys. Authors' layouts
    are converted.
    """
    if prefix is None and any(k.startswith('backbone.') for k in state_dict):
        prefix = 'backbone.'
    if prefix:
        state_dict = OrderedDict((k[len(prefix):], v) for k, v in state_dict.items()
                                 if k.startswith(prefix))
    if is_reference_layout(state_dict):
        state_dict = convert_reference_state_dict(state_dict)
    return state_dict


def load_fec_checkpoint(model: nn.Module, filename: str, prefix: Optional[str] = None,
                        map_location: str = 'cpu') -> None:
    """Load a checkpoint into an FEC backbone and report what did not match.

    Missing and unexpected keys are logged through mmengine's logger as a
    warning. A tensor whose shape differs from the model's is an error naming
    the key, as is a checkpoint that shares no key with the model.

    Args:
        model (nn.Module): The FEC backbone.
        filename (str): Checkpoint path (or URL mmengine can load).
        prefix (str, optional): Key prefix of the backbone in the checkpoint.
        map_location (str): Where to load tensors. Default 'cpu'.
    """
    logger = MMLogger.get_current_instance()
    state_dict = backbone_state_dict(read_state_dict(filename, map_location), prefix)
    own = model.state_dict()
    for key, value in state_dict.items():
        if key in own and own[key].shape != value.shape:
            raise ValueError(f'FEC checkpoint {filename}: {key} has shape {tuple(value.shape)}, '
                             f'the model expects {tuple(own[key].shape)} (another arch?)')
    matched = [k for k in state_dict if k in own]
    if not matched:
        raise ValueError(f'FEC checkpoint {filename} shares no key with the model '
                         f'(first keys: {list(state_dict)[:5]}); wrong file or prefix?')
    result = model.load_state_dict(state_dict, strict=False)
    logger.info(f'FEC: loaded {len(matched)}/{len(own)} tensors from {filename}')
    if result.missing_keys:
        logger.warning(f'FEC: missing keys in {filename} (left at their init): '
                       f'{", ".join(result.missing_keys)}')
    if result.unexpected_keys:
        logger.warning(f'FEC: unexpected keys in {filename} (ignored): '
                       f'{", ".join(result.unexpected_keys)}')
