"""A tiny mmpretrain classifier config with FEC on six 64×64 images, for
the training-tool tests (fast on CPU, with random crop, flip and drop path)."""
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

CONFIG = '''
default_scope = 'mmpretrain'
custom_imports = dict(imports={imports!r}, allow_failed_imports=False)
model = dict(
    type='ImageClassifier',
    data_preprocessor=dict(num_classes=2, mean=[127.5] * 3, std=[127.5] * 3, to_rgb=True),
    backbone=dict(type='FEC', arch={arch!r},
                  num_centers=(2, 2, 1, 1), out_indices=(3,), drop_path_rate=0.3,
                  ops_impl='reference'),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(type='LinearClsHead', num_classes=2, in_channels=32,
              loss=dict(type='CrossEntropyLoss')))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='RandomResizedCrop', scale=64),
    dict(type='RandomFlip', prob=0.5, direction='horizontal'),
    dict(type='PackInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='CustomDataset', data_root={data_root!r}, ann_file={ann_file!r},
                 pipeline=train_pipeline),
    sampler=dict(type='DefaultSampler', shuffle=True))
train_cfg = dict(type='IterBasedTrainLoop', max_iters=4)
optim_wrapper = dict(optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.05))
param_scheduler = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0, end=4)]
default_hooks = dict(
    checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
    logger=dict(type='LoggerHook', interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
env_cfg = dict(cudnn_benchmark=False, mp_cfg=dict(mp_start_method='fork', opencv_num_threads=1),
               dist_cfg=dict(backend='gloo'))
'''

ARCH = dict(depths=(1, 1, 1, 1), widths=(8, 8, 16, 32), heads=(1, 1, 1, 1), head_dim=8)


def write_images(root: Path, per_class: int = 3) -> Path:
    """Write ``per_class`` random 64×64 PNGs into ``root/cat`` and ``root/dog``."""
    rng = np.random.default_rng(0)
    for name in ('cat', 'dog'):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f'{i}.png')
    return root


def write_config(path: Path, data_root: str, ann_file: str = '',
                 imports: Sequence[str] = ('fec_mm',), arch=None, extra: str = '') -> Path:
    """Write the tiny classifier config to ``path`` and return it."""
    path.write_text(CONFIG.format(imports=list(imports), arch=arch or ARCH,
                                  data_root=data_root, ann_file=ann_file) + extra)
    return path


TEST = """
test_dataloader = dict(
    batch_size=2, num_workers=0,
    dataset=dict(type='CustomDataset', data_root={data_root!r}, pipeline=[
        dict(type='LoadImageFromFile'), dict(type='PackInputs')]),
    sampler=dict(type='DefaultSampler', shuffle=False))
test_cfg = dict()
test_evaluator = dict(type='Accuracy', topk=(1,))
"""


def write_test_config(path: Path, data_root: str, **kwargs) -> Path:
    """The tiny config with a test dataloader over ``data_root`` and accuracy."""
    return write_config(path, data_root, extra=TEST.format(data_root=data_root), **kwargs)


def write_dog_checkpoint(config: Path, path: Path) -> Path:
    """Save weights of the config's model whose head says 'dog' (class 1)
    for every image, whatever the backbone gives."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    import fec_mm  # noqa: F401
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    state_dict = MODELS.build(Config.fromfile(str(config)).model).state_dict()
    state_dict['head.fc.weight'].zero_()
    state_dict['head.fc.bias'].copy_(torch.tensor([-50.0, 50.0]))
    torch.save(dict(state_dict=state_dict, meta=dict()), path)
    return path
