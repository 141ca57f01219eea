"""Files laid out like the authors' released FEC checkpoints, for the tests.

Backbone keys and shapes come from the key lists recorded from their model
code (``tests/data/reference_checkpoint_keys_{size}.tsv``, see
``tools/record_reference_keys.py``); neck and head keys are mmdet 2.x /
mmseg 0.x names, which are those of mmdet 3.x / mmseg 1.x for Mask R-CNN and
Semantic FPN. The containers are what their training wrote: timm's
``{'state_dict', 'optimizer', 'epoch', 'arch', 'args', 'version'}`` for
classification, mmcv-full 1.6's ``{'meta', 'state_dict', 'optimizer'}`` with
an mmdet 2.24 / mmseg 0.24 ``meta`` for detection and segmentation.
"""
import argparse
import importlib
from collections import OrderedDict
from pathlib import Path
from typing import Dict, Optional

import torch
from mmengine.config import Config
from mmengine.registry import DefaultScope
from torch import Tensor

from fec_mm.models.checkpoint import convert_reference_key

DATA = Path(__file__).resolve().parent / 'data'
CONFIGS = str(Path(__file__).resolve().parents[1] / 'configs')
TASK_CONFIGS = {
    'det': {'small': 'fec_maskrcnn.py', 'base': 'fec_maskrcnn_base.py',
            'large': 'fec_maskrcnn_large.py'},
    'seg': {'small': 'fec_semfpn_ade20k.py', 'base': 'fec_semfpn_ade20k_base.py',
            'large': 'fec_semfpn_ade20k_large.py'},
    'cls': {size: f'fec_{size}_in1k.py' for size in ('small', 'base', 'large')},
}
SCOPES = {'det': 'mmdet', 'seg': 'mmseg', 'cls': 'mmpretrain'}
CLASSES = ['person', 'bicycle', 'car']
PALETTE = [[120, 120, 120], [180, 120, 120], [6, 230, 230]]


def build(task: str, size: str, seed: int = 0) -> torch.nn.Module:
    """The model of our config for ``task`` and ``size``, on CPU, eval mode."""
    from mmengine.model import revert_sync_batchnorm
    cfg = Config.fromfile(f'{CONFIGS}/{TASK_CONFIGS[task][size]}')
    torch.manual_seed(seed)
    registry = importlib.import_module(f'{SCOPES[task]}.registry').MODELS
    with DefaultScope.overwrite_default_scope(SCOPES[task]):
        model = registry.build(cfg.model)
    return revert_sync_batchnorm(model).eval()


def perturbed(model: torch.nn.Module, seed: int) -> dict:
    """The model's state dict with every float tensor moved, so that a
    load that skipped a tensor shows."""
    gen = torch.Generator().manual_seed(seed)
    return {k: v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


def authors_keys(size: str, dense: bool) -> 'OrderedDict[str, tuple]':
    """Keys and shapes of the authors' FEC-{size}: the classifier's
    (``dense=False``) or the detection/segmentation backbone's."""
    keys: 'OrderedDict[str, tuple]' = OrderedDict()
    in_dense = False
    for line in (DATA / f'reference_checkpoint_keys_{size}.tsv').read_text().splitlines():
        if line.startswith('# dense'):
            in_dense = True
            continue
        if line.startswith('#') or not line.strip() or (in_dense and not dense):
            continue
        key, shape = line.split('\t')
        if dense and key.split('.')[0] in ('norm', 'head'):
            continue
        keys[key] = tuple(int(s) for s in shape.strip('()').split(',') if s.strip())
    return keys


def to_authors_backbone(ours: Dict[str, Tensor], size: str, dense: bool) -> 'OrderedDict':
    """Our backbone weights (unprefixed) under the authors' names, checking
    that the recorded key list and our model hold the same tensors."""
    recorded = authors_keys(size, dense)
    theirs = OrderedDict()
    for key, shape in recorded.items():
        if key.startswith('head.'):
            continue
        value = ours[convert_reference_key(key)]
        assert tuple(value.shape) == shape, (key, tuple(value.shape), shape)
        theirs[key] = value.clone()
    assert len(theirs) == len(ours), sorted(set(ours) - {convert_reference_key(k)
                                                          for k in theirs})
    return theirs


def _optimizer_state(state_dict: Dict[str, Tensor]) -> dict:
    params = list(range(len(state_dict)))
    first = next(iter(state_dict.values()))
    return {'state': {0: {'step': torch.tensor(12.), 'exp_avg': torch.zeros_like(first),
                          'exp_avg_sq': torch.zeros_like(first)}},
            'param_groups': [{'lr': 2e-6, 'betas': (0.9, 0.999), 'eps': 1e-8,
                              'weight_decay': 1e-4, 'amsgrad': False, 'params': params}]}


def authors_file(whole: Dict[str, Tensor], size: str, task: str, path: Path,
                 classes: Optional[list] = None, palette: Optional[list] = None) -> Path:
    """Write ``whole`` (a model's state dict in fec-mm's names) as the
    authors' file of ``task`` ('cls', 'det' or 'seg') would hold it."""
    backbone = {k[len('backbone.'):]: v for k, v in whole.items() if k.startswith('backbone.')}
    rest = OrderedDict((k, v.clone()) for k, v in whole.items() if not k.startswith('backbone.'))
    if task == 'cls':
        state_dict = to_authors_backbone(backbone, size, dense=False)
        state_dict['head.weight'] = rest.pop('head.fc.weight')
        state_dict['head.bias'] = rest.pop('head.fc.bias')
        assert not rest, list(rest)
        args = argparse.Namespace(model=f'fec_{size}', lr=1e-3, drop_path=0.1, amp=True)
        checkpoint = {'epoch': 309, 'arch': f'fec_{size}', 'state_dict': state_dict,
                      'optimizer': _optimizer_state(state_dict), 'version': 2, 'args': args}
    else:
        state_dict = OrderedDict(('backbone.' + k, v) for k, v in
                                 to_authors_backbone(backbone, size, dense=True).items())
        state_dict.update(rest)
        library = 'mmdet' if task == 'det' else 'mmseg'
        meta = {f'{library}_version': '2.24.0' if task == 'det' else '0.24.0',
                'config': f"model = dict(backbone=dict(type='fec_{size}_{task}'))\n",
                'env_info': 'sys.platform: linux\nPyTorch: 1.12.1', 'seed': 0,
                'exp_name': f'authors_{task}.py', 'mmcv_version': '1.6.0',
                'time': 'Mon Nov  7 10:00:00 2022', 'epoch': 12, 'iter': 87936,
                'hook_msgs': {'last_ckpt': '/work_dirs/latest.pth'},
                'CLASSES': tuple(classes or ())}
        if palette is not None:
            meta['PALETTE'] = [list(c) for c in palette]
        checkpoint = {'meta': meta, 'state_dict': state_dict,
                      'optimizer': _optimizer_state(state_dict)}
    torch.save(checkpoint, path)
    return path
