"""Loading FEC weights: our checkpoints and the authors' layout.

The authors' FEC checkpoints (see ``shared/reference_checkpoint_keys_small.tsv``)
name the stages ``network.{0,2,4,6}``, the cluster poolings
``network.{1,3,5}`` (with their norm as ``norm2``), the classification norm
``norm`` and the dense-prediction norms ``norm{0,2,4,6}``.
"""
import os.path as osp
import re
from collections import OrderedDict
from typing import Dict, Optional

import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.runner import CheckpointLoader
from torch import Tensor

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
    strips a DDP 'module.' prefix. Raises FileNotFoundError for a missing
    local file and ValueError for a file that holds no state dict.
    """
    if '://' not in filename and not osp.isfile(filename):
        raise FileNotFoundError(f'FEC checkpoint not found: {filename}')
    try:
        if '://' in filename:
            checkpoint = CheckpointLoader.load_checkpoint(filename, map_location=map_location)
        else:
            # Our checkpoints hold mmengine objects (message hub, history
            # buffers) that torch>=2.6's weights_only loading refuses; the
            # path is the user's own choice, as with mmengine's loader.
            checkpoint = torch.load(filename, map_location=map_location, weights_only=False)
    except Exception as err:  # noqa: BLE001 - re-raised with the file name
        raise ValueError(f'could not read FEC checkpoint {filename}: {err}') from err
    if not isinstance(checkpoint, dict):
        raise ValueError(f'FEC checkpoint {filename} holds a {type(checkpoint).__name__}, '
                         'not a dict of weights')
    for key in ('state_dict', 'model'):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    state_dict = OrderedDict(
        (k[len('module.'):] if k.startswith('module.') else k, v)
        for k, v in checkpoint.items() if isinstance(v, Tensor))
    if not state_dict:
        raise ValueError(f'FEC checkpoint {filename} holds no tensors '
                         f'(top-level keys: {sorted(checkpoint)[:10]})')
    return state_dict


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
