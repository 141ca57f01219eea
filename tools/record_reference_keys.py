"""Record the state-dict keys and shapes of the authors' FEC models as test data.

Usage (the authors' repository fetched or cloned to AUTHORS_REPO)::

    python tools/record_reference_keys.py AUTHORS_REPO/models/fec.py tests/data

Runs their ``models/fec.py`` (guikunchen/FEC) with import shims only: timm's
``DropPath``, ``trunc_normal_``, ``register_model``, ``to_2tuple`` and mean/std
constants, and torch-scatter's ``scatter_sum`` are replaced by small stand-ins
(none of them changes a key or a shape), and mmdet/mmseg are hidden so their
1.x-generation registration is skipped. Writes
``reference_checkpoint_keys_{small,base,large}.tsv``: the classification
model (``fec_small``...) and, after it, the extra keys of the detection /
segmentation backbone (``fork_feat=True``: ``norm0/2/4/6``, no ``norm`` and
``head``). The tests build the authors' whole-model files from these lists.
"""
import argparse
import importlib.util
import os.path as osp
import sys
import types
from typing import Optional, Sequence

import torch
import torch.nn as nn

SIZES = {  # the settings of their fec_{size}_seg classes (keys do not depend on centers)
    'small': dict(layers=[3, 4, 5, 2], embed_dims=[32, 64, 196, 320], heads=[4, 4, 8, 8],
                  head_dim=[24] * 4),
    'base': dict(layers=[2, 2, 6, 2], embed_dims=[64, 128, 320, 512], heads=[4, 4, 8, 8],
                 head_dim=[32] * 4),
    'large': dict(layers=[4, 4, 12, 4], embed_dims=[64, 128, 320, 512],
                  heads=[6, 6, 12, 12], head_dim=[32] * 4),
}


def _shim(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module


def load_authors_module(path: str) -> types.ModuleType:
    """Import the authors' ``models/fec.py`` with the import shims."""
    _shim('timm')
    _shim('timm.data', IMAGENET_DEFAULT_MEAN=(0.485, 0.456, 0.406),
          IMAGENET_DEFAULT_STD=(0.229, 0.224, 0.225))
    _shim('timm.models')
    _shim('timm.models.layers', DropPath=lambda p=0.: nn.Identity(),
          trunc_normal_=nn.init.trunc_normal_)
    _shim('timm.models.registry', register_model=lambda fn: fn)
    _shim('timm.layers')
    _shim('timm.layers.helpers', to_2tuple=lambda x: x if isinstance(x, tuple) else (x, x))

    def scatter_sum(src, index, dim=0, dim_size=None):
        out = src.new_zeros((dim_size,) + tuple(src.shape[1:]))
        return out.index_add_(dim, index, src)

    _shim('torch_scatter', scatter_sum=scatter_sum)
    for name in ('mmseg.models.builder', 'mmdet.models.builder'):
        sys.modules[name] = None  # their 1.x registration: ImportError, skipped
    spec = importlib.util.spec_from_file_location('authors_fec', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def authors_model(module: types.ModuleType, size: str, dense: bool) -> nn.Module:
    """Their classification model (``fec_{size}``) or dense backbone
    (``fork_feat=True``, as their ``fec_{size}_seg`` / ``_det``)."""
    if not dense:
        return getattr(module, f'fec_{size}')()
    s = SIZES[size]
    return module.FEC(s['layers'], embed_dims=s['embed_dims'], norm_layer=module.GroupNorm,
                      mlp_ratios=[8, 8, 4, 4], downsamples=[True] * 4, down_patch_size=3,
                      down_pad=1, proposal_w=[10, 10, 5, 5], proposal_h=[10, 10, 5, 5],
                      fold_w=[1] * 4, fold_h=[1] * 4, heads=s['heads'],
                      head_dim=s['head_dim'], fork_feat=True)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('authors_fec', help="path of the authors' models/fec.py")
    parser.add_argument('out_dir', help='folder for reference_checkpoint_keys_*.tsv')
    args = parser.parse_args(argv)
    module = load_authors_module(args.authors_fec)
    for size in SIZES:
        cls = authors_model(module, size, dense=False).state_dict()
        dense = authors_model(module, size, dense=True).state_dict()
        assert [k for k in cls if k in dense] == [k for k in dense if k in cls]
        path = osp.join(args.out_dir, f'reference_checkpoint_keys_{size}.tsv')
        with open(path, 'w') as f:
            f.write(f"# state_dict keys and shapes of the authors' FEC-{size.capitalize()}, "
                    'recorded by tools/record_reference_keys.py from their models/fec.py\n'
                    f'# (guikunchen/FEC 9ab075b). Classification model (fec_{size}, 1000 '
                    'classes) first; then, after\n# "# dense", the keys only the '
                    'detection/segmentation backbone (fork_feat=True) has.\n'
                    '# Dense files drop norm.* and head.* (classification only).\n')
            for key, value in cls.items():
                f.write(f'{key}\t{tuple(value.shape)}\n')
            f.write('# dense\n')
            for key, value in dense.items():
                if key not in cls:
                    f.write(f'{key}\t{tuple(value.shape)}\n')
        print(f'{path}: {len(cls)} classification keys, '
              f'{sum(k not in cls for k in dense)} dense-only keys')


if __name__ == '__main__':
    torch.manual_seed(0)
    main()
