"""Context Clusters weights: the authors' layout, and telling CoC from FEC files.

The authors' ``models/context_cluster.py`` (github.com/ma-xu/Context-Cluster)
names the stages ``network.{0,2,4,6}``, the 3×3 stride-2 downsampling convs
``network.{1,3,5}.proj``, the dense-prediction norms ``norm{0,2,4,6}``, the
classification norm ``norm`` and the classifier ``head``. Some released
detection/segmentation files hold the block MLPs as 1×1 convolutions
(``mlp.fc1.weight`` of shape (r·C, C, 1, 1); their issue #31) where the model
has ``nn.Linear``: :func:`convert_coc_state_dict` reshapes them and says so.

FEC and CoC share the block, so one's stage weights fit the other's shapes
(CoC-Tiny's blocks are FEC-Small's, CoC-Small's are FEC-Base's): a file of one
family given to the other would load silently with its downsampling layers
missing. :func:`check_family` refuses that, naming both.
"""
import re
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

from torch import Tensor

from ..checkpoints.safe_load import last_read_file
from .checkpoint import convert_reference_key

StateDict = Dict[str, Tensor]

# Keys that only one family has, in the authors' layout and in ours.
# (cluster_poolings.*.proj: the CoC downsampling as FEC's key converter renames it.)
_COC_KEYS = re.compile(r'^(network\.\d*[13579]\.proj\.|downsamples\.'
                       r'|cluster_poolings\.\d+\.proj\.)')
_FEC_KEYS = re.compile(r'^(network\.\d*[13579]\.(conv_f|conv_v|conv_skip|norm2)\.'
                       r'|cluster_poolings\.)')
_MLP_CONV = re.compile(r'^stages\.\d+\.\d+\.mlp\.fc[12]\.weight$')


def is_coc_reference_layout(keys) -> bool:
    """Whether backbone keys (no prefix) are in the authors' CoC layout."""
    return any(re.match(r'^network\.\d*[13579]\.proj\.', k) for k in keys)


def checkpoint_family(keys) -> Optional[str]:
    """'ContextCluster', 'FEC' or None (neither's own keys) for backbone keys
    without prefix, in either the authors' layout or ours."""
    keys = list(keys)
    if any(_COC_KEYS.match(k) for k in keys):
        return 'ContextCluster'
    if any(_FEC_KEYS.match(k) for k in keys):
        return 'FEC'
    return None


def check_family(model_type: str, keys, source: str = '') -> None:
    """Refuse the weights of the other family (FEC vs ContextCluster).

    Args:
        model_type (str): 'FEC' or 'ContextCluster', the model loading them.
        keys (Iterable[str]): Backbone keys, prefix removed.
        source (str): The file they come from, for the message; default: the
            checkpoint file read last in this thread, if any (what mmengine's
            and the libraries' loaders read through fec-mm's safe loader).

    Raises:
        ValueError: Naming both backbones and the config to use instead.
    """
    family = checkpoint_family(keys)
    if family is None or family == model_type:
        return
    if source:
        where = f' {source}'
    else:
        last = last_read_file()
        where = f' (last checkpoint file read: {last})' if last else ''
    raise ValueError(
        f'{model_type} cannot take the checkpoint{where}: it holds {family} weights '
        f"({'3x3 conv downsampling layers' if family == 'ContextCluster' else 'cluster poolings'}"
        f'). Both backbones share the cluster block, so it would load partly and silently; '
        f"use backbone=dict(type='{family}', ...) for this file.")


def convert_coc_state_dict(state_dict: StateDict,
                           prefix: str = '') -> Tuple[StateDict, List[str]]:
    """Convert the authors' CoC keys under ``prefix`` to ours; other keys stay.

    Returns:
        tuple[OrderedDict, list[str]]: the converted state dict and the
        (converted) keys of 1×1-conv MLP weights that were reshaped to
        ``nn.Linear``'s (out, in).
    """
    out: StateDict = OrderedDict()
    reshaped = []
    for key, value in state_dict.items():
        if key.startswith(prefix):
            key = prefix + convert_reference_key(key[len(prefix):], 'ContextCluster')
            if _MLP_CONV.match(key[len(prefix):]) and value.dim() == 4:
                value = value.reshape(value.shape[0], value.shape[1])
                reshaped.append(key)
        out[key] = value
    return out, reshaped
