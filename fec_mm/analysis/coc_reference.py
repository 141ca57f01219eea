"""Our ContextCluster against the authors' ``models/context_cluster.py``.

The authors' file (github.com/ma-xu/Context-Cluster; HEAD includes their fix
3ccb0b6 "fix bug mask.sum to sim.sum") is executed as it is; only its timm
imports are served by a small stand-in module (``IMAGENET_DEFAULT_*``,
``DropPath``, ``trunc_normal_``, ``register_model``, ``to_2tuple``: none of
the maths), its mmdet/mmseg 2.x imports are made to fail (it then skips its
registration), and its import-time prints are swallowed. Their einops is the
real package.

Weights: seeded, non-trivial random values for every tensor (layer scales
around 0.3 rather than 1e-5, random α and β, GroupNorm affines away from 1/0),
made in our key space, written into the authors' layout by
:func:`to_authors_layout` to load into their model (strictly), and read back
into ours through the converter (:mod:`fec_mm.models.coc_checkpoint`).
"""
import contextlib
import importlib.util
import io
import math
import os
import subprocess
import sys
import tempfile
import types
from collections import OrderedDict
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..models import ContextCluster

# The released models checked (name -> our constructor arguments and the
# authors' ContextCluster arguments). Classification models come from the
# authors' `coc_*` functions; the dense ones use the settings of their
# `context_cluster_{small,medium}_feat{2,5,7}` classes (which the file only
# defines when mmdet 2.x is installed).
_DENSE_ARCH = {
    'small': dict(layers=[2, 2, 6, 2], embed_dims=[64, 128, 320, 512], heads=[4, 4, 8, 8],
                  head_dim=[32] * 4),
    'medium': dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512],
                   heads=[6, 6, 12, 12], head_dim=[32] * 4),
}


def _timm_stand_in() -> Dict[str, types.ModuleType]:
    """The five names the authors' file imports from timm."""
    def register_model(fn):
        return fn

    class DropPath(nn.Module):  # identity in eval, which is all that is compared
        def __init__(self, drop_prob: float = 0.) -> None:
            super().__init__()
            self.drop_prob = drop_prob

        def forward(self, x: Tensor) -> Tensor:
            if self.drop_prob == 0. or not self.training:
                return x
            keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(
                1 - self.drop_prob)
            return x * keep / (1 - self.drop_prob)

    mods = {name: types.ModuleType(name) for name in (
        'timm', 'timm.data', 'timm.models', 'timm.models.layers', 'timm.models.registry',
        'timm.models.layers.helpers')}
    mods['timm.data'].IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
    mods['timm.data'].IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
    mods['timm.models.layers'].DropPath = DropPath
    mods['timm.models.layers'].trunc_normal_ = nn.init.trunc_normal_
    mods['timm.models.registry'].register_model = register_model
    mods['timm.models.layers.helpers'].to_2tuple = lambda x: x if isinstance(x, tuple) else (x, x)
    return mods


def read_authors_source(source: str) -> str:
    """Text of ``models/context_cluster.py`` from a file or a (bare) git repository."""
    if os.path.isfile(source):
        with open(source, encoding='utf-8') as f:
            return f.read()
    if os.path.isdir(source):
        work_tree = os.path.join(source, 'models', 'context_cluster.py')
        if os.path.isfile(work_tree):
            return read_authors_source(work_tree)
        result = subprocess.run(['git', f'--git-dir={source}', 'show',
                                 'HEAD:models/context_cluster.py'],
                                capture_output=True, text=True)
        if result.returncode == 0:
            return result.stdout
    raise FileNotFoundError(f'{source}: neither models/context_cluster.py nor a repository of '
                            'github.com/ma-xu/Context-Cluster holding it')


def load_authors_module(source: str) -> types.ModuleType:
    """Execute the authors' ``context_cluster.py`` (see the module docstring)."""
    text = read_authors_source(source)
    blocked = ('mmseg.models.builder', 'mmdet.models.builder')
    saved = {name: sys.modules.get(name) for name in (*_timm_stand_in(), *blocked)}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, 'coc_authors_context_cluster.py')
        with open(path, 'w', encoding='utf-8') as f:
            f.write(text)
        spec = importlib.util.spec_from_file_location('coc_authors_context_cluster', path)
        module = importlib.util.module_from_spec(spec)
        try:
            sys.modules.update(_timm_stand_in())
            for name in blocked:
                sys.modules[name] = None  # ImportError: their 2.x registration is skipped
            with contextlib.redirect_stdout(io.StringIO()):
                spec.loader.exec_module(module)
        finally:
            for name, old in saved.items():
                if old is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = old
    return module


def build_authors_model(module: types.ModuleType, arch: str, num_centers: int = 2,
                        dense: bool = False) -> nn.Module:
    """The authors' ``coc_{arch}()`` classifier, or (``dense``) their
    ``context_cluster_{arch}_feat{num_centers}`` backbone."""
    if not dense:
        return getattr(module, f'coc_{arch}')()
    a = _DENSE_ARCH[arch]
    return module.ContextCluster(
        a['layers'], embed_dims=a['embed_dims'], norm_layer=module.GroupNorm,
        mlp_ratios=[8, 8, 4, 4], downsamples=[True] * 4, down_patch_size=3, down_pad=1,
        proposal_w=[num_centers] * 4, proposal_h=[num_centers] * 4, fold_w=[8, 4, 2, 1],
        fold_h=[8, 4, 2, 1], heads=a['heads'], head_dim=a['head_dim'], fork_feat=True)


def build_ours(arch: str, num_centers: int = 2, dense: bool = False,
               ops_impl: str = 'reference') -> ContextCluster:
    """Our backbone for the same model (classification: stage 3 only)."""
    return ContextCluster(arch, num_centers=None if not dense else num_centers,
                          out_indices=(0, 1, 2, 3) if dense else (3,), ops_impl=ops_impl)


def random_weights(model: ContextCluster, num_classes: int = 0,
                   seed: int = 0) -> 'OrderedDict[str, Tensor]':
    """Seeded non-trivial weights in our key space (plus ``head.fc.*`` when
    ``num_classes``), the same on every machine (torch's CPU generator)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(k, v.shape) for k, v in model.state_dict().items()]
    if num_classes:
        width = model.arch['widths'][3]
        shapes += [('head.fc.weight', torch.Size([num_classes, width])),
                   ('head.fc.bias', torch.Size([num_classes]))]
    out = OrderedDict()
    for key, shape in shapes:
        u = torch.rand(shape, generator=gen)
        if 'layer_scale' in key:
            t = 0.1 + 0.4 * u
        elif key.endswith('sim_alpha'):
            # |α| >= 0.5, one in five negative (their sigmoid-then-max is then an
            # argmin). Near α = 0 their float32 sigmoid values tie where α·cos
            # does not, and their max keeps the first center (see the docs).
            t = torch.where(u < 0.2, -(0.5 + 5 * u), 0.5 + 2 * (u - 0.2))
        elif key.endswith('sim_beta'):
            t = u - 0.5
        elif len(shape) == 1 and 'norm' in key and key.endswith('weight'):
            t = 0.7 + 0.6 * u
        elif len(shape) == 1:
            t = 0.2 * (u - 0.5)
        else:
            fan_in = math.prod(shape[1:])
            t = (2 * u - 1) * math.sqrt(3.0 / fan_in)
        out[key] = t
    return out


def to_authors_layout(state_dict: Dict[str, Tensor], dense: bool,
                      conv_mlp: bool = False) -> 'OrderedDict[str, Tensor]':
    """Our keys in the authors' layout (the inverse of the converter); with
    ``conv_mlp`` the MLP weights as (out, in, 1, 1), as in some of their
    released dense files."""
    out = OrderedDict()
    for key, value in state_dict.items():
        parts = key.split('.')
        if parts[0] == 'stages':
            key = '.'.join(['network', str(2 * int(parts[1]))] + parts[2:])
            if conv_mlp and '.mlp.fc' in key and key.endswith('weight'):
                value = value[:, :, None, None]
        elif parts[0] == 'downsamples':
            key = '.'.join(['network', str(2 * int(parts[1]) + 1), 'proj'] + parts[2:])
        elif parts[0].startswith('norm'):
            k = int(parts[0][4:])
            key = '.'.join([f'norm{2 * k}' if dense else 'norm'] + parts[1:])
        elif key.startswith('head.fc.'):
            key = 'head.' + key[len('head.fc.'):]
        out[key] = value
    return out


def ours_forward(model: ContextCluster, state_dict: Dict[str, Tensor], x: Tensor,
                 dense: bool) -> List[Tensor]:
    """Load an authors'-layout state dict into our backbone through the
    converter and run it: the four maps (dense) or the logits."""
    head = {k[len('head.'):]: v for k, v in state_dict.items() if k.startswith('head.')}
    backbone = OrderedDict((k, v) for k, v in state_dict.items() if not k.startswith('head.'))
    model.load_state_dict(backbone)  # strict: every tensor converted and used
    model.eval()
    with torch.no_grad():
        outs = list(model(x))
        if dense:
            return outs
        return [nn.functional.linear(outs[0].mean((-2, -1)), head['weight'], head['bias'])]


CASES: Dict[str, dict] = {
    # name: arch, dense, centers, input (H, W)
    'cls_tiny_224': dict(arch='tiny', dense=False, num_centers=2, size=(224, 224)),
    'cls_tiny_plain_224': dict(arch='tiny_plain', dense=False, num_centers=2, size=(224, 224)),
    'cls_small_224': dict(arch='small', dense=False, num_centers=2, size=(224, 224)),
    'cls_medium_224': dict(arch='medium', dense=False, num_centers=2, size=(224, 224)),
    'det_small_feat5_480x640': dict(arch='small', dense=True, num_centers=5, size=(480, 640)),
    'seg_small_feat7_512': dict(arch='small', dense=True, num_centers=7, size=(512, 512)),
    'det_small_feat5_256x320': dict(arch='small', dense=True, num_centers=5, size=(256, 320)),
}


def case_inputs(case: dict, seed: int = 1) -> Tuple[Tensor, 'OrderedDict[str, Tensor]']:
    """(image batch (1, 3, H, W), weights in the authors' layout) of a case."""
    model = build_ours(case['arch'], case['num_centers'], case['dense'])
    weights = random_weights(model, 0 if case['dense'] else 1000, seed)
    x = torch.randn(1, 3, *case['size'], generator=torch.Generator().manual_seed(seed))
    return x, to_authors_layout(weights, case['dense'], conv_mlp=case['dense'])


def authors_forward(module: types.ModuleType, case: dict, x: Tensor,
                    weights: Dict[str, Tensor]) -> List[Tensor]:
    """Run the authors' model of ``case`` with ``weights`` (MLPs as their
    nn.Linear: weights saved as 1×1 convs are flattened to their Linear shape first)."""
    model = build_authors_model(module, case['arch'], case['num_centers'], case['dense'])
    weights = OrderedDict((k, v.flatten(1) if '.mlp.fc' in k and v.dim() == 4 else v)
                          for k, v in weights.items())
    model.load_state_dict(weights)  # strict: the inverse layout covers every tensor
    model.eval()
    with torch.no_grad():
        out = model(x)
    return list(out) if case['dense'] else [out]


def probe(outputs: List[Tensor], count: int = 512, seed: int = 2) -> List[Tensor]:
    """A small record of each output: ``count`` seeded entries and each
    channel's mean (what the shipped test data keeps)."""
    gen = torch.Generator().manual_seed(seed)
    rec = []
    for o in outputs:
        flat = o.flatten()
        idx = torch.randint(0, flat.numel(), (min(count, flat.numel()),), generator=gen)
        rec.append(torch.cat([flat[idx], o.mean(dim=tuple(d for d in range(o.dim()) if d != 1))
                              if o.dim() > 2 else o.flatten()[:0]]))
    return rec


def max_difference(a: List[Tensor], b: List[Tensor]) -> float:
    """Largest |a - b| relative to max |b|, over all outputs."""
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12))
               for x, y in zip(a, b))
