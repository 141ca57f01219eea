"""Loading FEC weights: our checkpoints and the authors' layout.

The authors' FEC checkpoints (see ``tests/data/reference_checkpoint_keys_small.tsv``)
name the stages ``network.{0,2,4,6}``, the cluster poolings
``network.{1,3,5}`` (with their norm as ``norm2``), the classification norm
``norm`` and the dense-prediction norms ``norm{0,2,4,6}``. Their released
files are whole models: classification ones in timm's layout (the backbone
at the top level, the linear classifier as ``head.*``), detection and
segmentation ones saved by mmdet 2.24 / mmseg 0.24 (the backbone under
``backbone.``, FPN and heads under mmdet's / mmseg's names, which mmdet 3.x
and mmseg 1.x kept: their own model zoos list 2.x / 0.x files of Mask R-CNN
and Semantic FPN for the 3.x / 1.x configs). :func:`convert_whole_model`
maps such a file to fec-mm's whole-model names.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

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
FEC_PRESETS = ('small', 'base', 'large')


def is_reference_layout(state_dict: StateDict) -> bool:
    """Whether keys follow the authors' ``network.{i}`` layout."""
    return any(key.startswith('network.') for key in state_dict)


def convert_reference_key(key: str, family: str = 'FEC') -> str:
    """Map one key of the authors' layout to ours (unknown keys unchanged).

    Both families' authors name the stages ``network.{0,2,4,6}``; the layers
    between them, ``network.{1,3,5}``, are FEC's cluster poolings
    (``cluster_poolings.*``, their ``norm2`` our ``norm``) or, with
    ``family='ContextCluster'``, CoC's 3×3 stride-2 convolutions
    (``network.*.proj`` becomes ``downsamples.*``).
    """
    match = re.match(r'^network\.(\d+)\.(.*)$', key)
    if match:
        index, rest = int(match.group(1)), match.group(2)
        if index % 2 == 0:
            return f'stages.{index // 2}.{rest}'
        if family == 'ContextCluster':
            rest = rest[len('proj.'):] if rest.startswith('proj.') else rest
            return f'downsamples.{index // 2}.{rest}'
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


AUTHORS_CLASSIFIER = 'timm layout (classifier, or a backbone alone)'
AUTHORS_DENSE = 'whole model (mmdet 2.x / mmseg 0.x layout)'


def authors_layout(state_dict: StateDict) -> Optional[str]:
    """Which of the authors' whole-model layouts ``state_dict`` has, or None.

    :data:`AUTHORS_CLASSIFIER`: the backbone's ``network.*`` keys at the top
    level; :data:`AUTHORS_DENSE`: under ``backbone.``.
    """
    if any(k.startswith('network.') for k in state_dict):
        return AUTHORS_CLASSIFIER
    if any(k.startswith('backbone.network.') for k in state_dict):
        return AUTHORS_DENSE
    return None


def convert_whole_model(state_dict: StateDict) -> Tuple[StateDict, Optional[str]]:
    """An authors' whole-model state dict in fec-mm's whole-model names.

    Classification (timm): every key but the classifier goes under
    ``backbone.`` through :func:`convert_reference_key` (``norm.*`` becomes
    ``backbone.norm3.*``), ``head.*`` becomes mmpretrain's ``head.fc.*``.
    Detection / segmentation: the keys under ``backbone.`` are converted the
    same way, the neck and heads are kept (mmdet 3.x / mmseg 1.x use the
    names and shapes of mmdet 2.x / mmseg 0.x for Mask R-CNN, FPN and
    Semantic FPN). Other state dicts are returned unchanged.

    Returns:
        tuple: The converted state dict and the layout found
        (:func:`authors_layout`), None for a state dict left unchanged.
    """
    layout = authors_layout(state_dict)
    if layout is None:
        return state_dict, None
    converted = OrderedDict()
    for key, value in state_dict.items():
        if layout == AUTHORS_CLASSIFIER:
            new = ('head.fc.' + key[len('head.'):] if key.startswith('head.')
                   else 'backbone.' + convert_reference_key(key))
        elif key.startswith('backbone.'):
            new = 'backbone.' + convert_reference_key(key[len('backbone.'):])
        else:
            new = key
        if new in converted:
            raise ValueError(f'the authors\' layout maps two keys to {new}: not an FEC checkpoint '
                             'of the authors\' (keys in both layouts?)')
        converted[new] = value
    return converted, layout


def matching_presets(state_dict: StateDict,
                     arch_settings: Dict[str, dict]) -> Tuple[List[str], str]:
    """The presets of ``arch_settings`` (FEC's or ContextCluster's) whose
    depths, widths and mixer channels an (unprefixed, our names) backbone
    state dict has, and a description of what it holds ('' when it holds no
    stages)."""
    depths, widths, dims = [], [], []
    for k in range(4):
        blocks = {int(m.group(1)) for key in state_dict
                  if (m := re.match(rf'^stages\.{k}\.(\d+)\.', key))}
        if not blocks:
            break
        depths.append(max(blocks) + 1)
        mixer = state_dict.get(f'stages.{k}.0.token_mixer.f.weight')
        widths.append(None if mixer is None else int(mixer.shape[1]))
        dims.append(None if mixer is None else int(mixer.shape[0]))
    if not depths:
        return [], ''
    n = len(depths)
    names = [name for name, arch in arch_settings.items()
             if (tuple(depths) == tuple(arch['depths'][:n])
                 and tuple(widths) == tuple(arch['widths'][:n])
                 and tuple(dims) == tuple(h * arch['head_dim'] for h in arch['heads'][:n]))]
    return names, f'depths {tuple(depths)}, widths {tuple(widths)}, mixer channels {tuple(dims)}'


def guess_fec_arch(state_dict: StateDict) -> Optional[str]:
    """The FEC preset whose depths, widths and heads an (unprefixed, our
    names) backbone state dict has: 'small', 'base', 'large', or a
    description of what it holds; None when it holds no FEC stages."""
    from .fec import FEC  # noqa: PLC0415 - fec imports this module
    names, holds = matching_presets(state_dict, FEC.arch_settings)
    return names[0] if names else (holds or None)


def describe_fec_weights(state_dict: StateDict, prefix: str = '') -> str:
    """'the file holds FEC(arch=...) weights' for the FEC weights under
    ``prefix`` (a description of depths and widths for a custom arch), or ''
    when there are none."""
    theirs = guess_fec_arch({k[len(prefix):]: v for k, v in state_dict.items()
                             if k.startswith(prefix)})
    if theirs in FEC_PRESETS:
        return f"the file holds FEC(arch='{theirs}') weights"
    return f'the file holds an FEC with {theirs}' if theirs else ''


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
        what = (describe_fec_weights(state_dict, prefix)
                or 'a checkpoint of another FEC arch or another model?')
        raise ValueError(f'{arch} cannot take these weights{source}: {len(mismatched)} tensors '
                         f'have other shapes (checkpoint vs model), e.g. {mismatched[:3]}; '
                         f'{what}')
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
