"""The clustering backbone families (FEC, Context Clusters) as whole-model
loading sees them: one place that knows, per backbone class, how the
authors' released whole-model files map to fec-mm's names and how to name
the arch a file holds.

:mod:`fec_mm.models.whole_model` (every library API's ``load_state_dict``)
and :func:`fec_mm.engine.testing.check_checkpoint_fits` (``tools/test.py``,
``load_from``, ``--resume``) go through :func:`backbones_of`,
:func:`convert_authors_whole_model` and :func:`check_backbones_fit`.
"""
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch.nn as nn
from torch import Tensor

from ..checkpoints.safe_load import last_read_file
from .checkpoint import (
    AUTHORS_CLASSIFIER,
    check_weights_fit,
    convert_reference_key,
    convert_whole_model,
    describe_fec_weights,
    matching_presets,
)
from .coc_checkpoint import (
    check_family,
    checkpoint_family,
    convert_coc_state_dict,
    is_coc_reference_layout,
)
from .context_cluster import ContextCluster
from .fec import FEC

StateDict = Dict[str, Tensor]
AUTHORS_PREFIX = 'backbone.'  # where their mmdet 2.x / mmseg 0.x files hold the backbone
COC_CLASSIFIER = 'Context Clusters timm layout (classifier, or a backbone alone)'
COC_DENSE = 'Context Clusters whole model (mmdet 2.x / mmseg 0.x layout)'


@dataclass(frozen=True)
class Family:
    """How whole-model loading treats one backbone class.

    Attributes:
        name (str): The registered type ('FEC', 'ContextCluster').
        module_type (type): The backbone class.
        convert (callable): ``state_dict -> (converted, layout, reshaped)``:
            an authors' whole-model file in fec-mm's names (backbone under
            ``backbone.``, a classifier's ``head`` as ``head.fc``), the
            layout found (None: not the authors', returned unchanged) and
            the keys of tensors whose shape was changed.
        describe (callable): ``(state_dict, prefix) -> str``: 'the file holds
            NAME(arch=...) weights' for the backbone weights under ``prefix``
            (our names), '' when there are none.
    """
    name: str
    module_type: type
    convert: Callable[[StateDict], Tuple[StateDict, Optional[str], List[str]]]
    describe: Callable[[StateDict, str], str]


def _convert_fec(state_dict: StateDict) -> Tuple[StateDict, Optional[str], List[str]]:
    converted, layout = convert_whole_model(state_dict)
    return converted, layout, []


def convert_coc_whole_model(state_dict: StateDict) -> Tuple[StateDict, Optional[str], List[str]]:
    """An authors' Context Clusters whole-model file in fec-mm's names.

    Classification (timm: ``network.*``, ``patch_embed``, ``norm``, ``head``
    at the top level): the backbone goes under ``backbone.``
    (:func:`~fec_mm.models.checkpoint.convert_reference_key`, ``norm`` becomes
    ``norm3``), ``head.*`` becomes mmpretrain's ``head.fc.*``. Mask R-CNN /
    Semantic FPN (mmdet 2.24 / mmseg 0.24: ``backbone.network.*``,
    ``backbone.norm{0,2,4,6}``): the backbone keys are converted, neck and
    heads kept (mmdet 3.x / mmseg 1.x kept their names). 1×1-conv MLP
    weights are reshaped to ``nn.Linear``'s (their issue #31).

    Returns:
        tuple: converted state dict, layout (:data:`COC_CLASSIFIER`,
        :data:`COC_DENSE` or None, then unchanged), reshaped keys.

    Raises:
        ValueError: Two keys map to one name (a file in both layouts).
    """
    if is_coc_reference_layout(state_dict):
        layout = COC_CLASSIFIER
        staged = OrderedDict(('head.fc.' + k[len('head.'):] if k.startswith('head.')
                              else AUTHORS_PREFIX + k, v) for k, v in state_dict.items())
    elif is_coc_reference_layout(k[len(AUTHORS_PREFIX):] for k in state_dict
                                 if k.startswith(AUTHORS_PREFIX)):
        layout, staged = COC_DENSE, state_dict
    else:
        return state_dict, None, []
    converted, reshaped = convert_coc_state_dict(staged, AUTHORS_PREFIX)
    if len(converted) != len(staged):
        names = Counter(AUTHORS_PREFIX + convert_reference_key(k[len(AUTHORS_PREFIX):],
                                                               'ContextCluster')
                        if k.startswith(AUTHORS_PREFIX) else k for k in staged)
        twice = [k for k, n in names.items() if n > 1]
        raise ValueError(f"the authors' Context Clusters layout maps two keys to {twice[0]}: "
                         "not a checkpoint of the authors' (keys in both layouts?)")
    return converted, layout, reshaped


def _describe_coc(state_dict: StateDict, prefix: str = '') -> str:
    names, holds = matching_presets({k[len(prefix):]: v for k, v in state_dict.items()
                                if k.startswith(prefix)}, ContextCluster.arch_settings)
    if names:
        archs = ' or '.join(f"'{n}'" for n in names)  # tiny / tiny_plain: same weights
        return f'the file holds ContextCluster(arch={archs}) weights'
    return f'the file holds a ContextCluster with {holds}' if holds else ''


FAMILIES: Tuple[Family, ...] = (
    Family('FEC', FEC, _convert_fec, describe_fec_weights),
    Family('ContextCluster', ContextCluster, convert_coc_whole_model, _describe_coc),
)


def family_of(module: nn.Module) -> Optional[Family]:
    """The family of a backbone module, or None."""
    return next((f for f in FAMILIES if isinstance(module, f.module_type)), None)


def backbones_of(model: nn.Module) -> List[Tuple[str, Family]]:
    """(key prefix such as 'backbone.', family) of each FEC or ContextCluster
    inside ``model``; empty when it holds none or is one itself."""
    return [(name + '.', family) for name, m in model.named_modules()
            if name and (family := family_of(m)) is not None]


def _file_backbone_keys(state_dict: StateDict, prefix: str) -> List[str]:
    """The backbone keys of a file (prefix removed): under ``prefix``, or at
    the top level for the authors' classifiers."""
    under = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    if under:
        return under
    return [k for k in state_dict if k.startswith('network.')]


def convert_authors_whole_model(
        model: nn.Module, state_dict: StateDict,
        source: str = '') -> Tuple[StateDict, Optional[str], List[str]]:
    """``state_dict`` as ``model`` (holding an FEC or ContextCluster
    backbone) takes it: a file of the other family is refused, an authors'
    whole-model file of the model's family converted to fec-mm's names.

    Returns:
        tuple: the state dict, the authors' layout found (None: ours), and
        the keys of reshaped tensors.

    Raises:
        ValueError: The file holds the other family's backbone (naming
            both and the file), or is malformed.
    """
    backbones = backbones_of(model)
    for prefix, family in backbones:
        check_family(family.name, _file_backbone_keys(state_dict, prefix), source)
    for _, family in backbones[:1]:  # the authors' files hold one backbone
        return family.convert(state_dict)
    return state_dict, None, []


def describe_archs(model: nn.Module, state_dict: StateDict) -> str:
    """'; the file holds ...' for each backbone of ``model`` (our names), or ''."""
    found = [family.describe(state_dict, prefix) for prefix, family in backbones_of(model)]
    return ''.join(f'; {d}' for d in found if d)


def check_backbones_fit(model: nn.Module, state_dict: StateDict) -> None:
    """Fail when the weights under a backbone's prefix (our names) are
    another arch's (or another model's), naming the arch the file holds."""
    for prefix, family in backbones_of(model):
        backbone = model.get_submodule(prefix[:-1])
        if family.name == 'FEC':
            check_weights_fit(backbone, state_dict, prefix)
            continue
        own = backbone.state_dict()
        bad = [f'{prefix}{k}: {tuple(state_dict[prefix + k].shape)} vs {tuple(v.shape)}'
               for k, v in own.items() if prefix + k in state_dict
               and state_dict[prefix + k].shape != v.shape]
        if bad:
            source = last_read_file()
            source = f' (last checkpoint file read: {source})' if source else ''
            what = (family.describe(state_dict, prefix)
                    or 'a checkpoint of another arch or another model?')
            raise ValueError(f"{family.name}(arch='{getattr(backbone, 'arch_name', '?')}') "
                             f'cannot take these weights{source}: {len(bad)} tensors have other '
                             f'shapes (checkpoint vs model), e.g. {bad[:3]}; {what}')


def convert_authors_file(state_dict: StateDict) -> Tuple[StateDict, Optional[str], List[str]]:
    """An authors' whole-model state dict (FEC's or Context Clusters', told
    apart by their own keys) in fec-mm's names, without a model: what the
    converters write. Returns as :attr:`Family.convert`."""
    top = [k for k in state_dict if k.startswith('network.')]
    keys = top or [k[len(AUTHORS_PREFIX):] for k in state_dict if k.startswith(AUTHORS_PREFIX)]
    name = checkpoint_family(keys) or 'FEC'
    return next(f for f in FAMILIES if f.name == name).convert(state_dict)


def is_classifier_layout(layout: Optional[str]) -> bool:
    """Whether an authors' layout (as returned by the conversions) is a
    classifier's (timm: backbone at the top level)."""
    return layout in (AUTHORS_CLASSIFIER, COC_CLASSIFIER)
