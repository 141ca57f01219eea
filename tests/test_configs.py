"""Every config in configs/ builds: its model (and the neck/heads accept the
FEC maps), every transform of its pipelines, its optimizer and schedulers;
the demo configs also build their datasets on generated demo data.
The real configs keep the authors' recipes (docs/notes/design.md §4)."""
import math

import pytest
import torch
from demo_config_helpers import (
    DEMO_CONFIGS,
    REAL_CONFIGS,
    load_demo_config,
    model_cfg,
    one_torch_thread,  # noqa: F401  (autouse fixture)
    registry,
)
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import PARAM_SCHEDULERS

from fec_mm.datasets import make_demo_data
from fec_mm.models import FEC, ContextCluster

ALL_CONFIGS = REAL_CONFIGS + DEMO_CONFIGS
LOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=4, num_val=2)
    return root


def _config(path, demo_root):
    if path in DEMO_CONFIGS:
        return load_demo_config(path, demo_root)
    return Config.fromfile(str(path))


def _features_reach_heads(model, cfg, x):
    """Run what follows the backbone on an input of a valid size; returns
    the outputs (a wrong in_channels anywhere raises)."""
    if cfg.default_scope == 'mmpretrain':
        return model(x, mode='tensor')
    if cfg.default_scope == 'mmseg':
        return model(x, mode='tensor')
    feats = model.extract_feat(x)
    head = model.rpn_head if hasattr(model, 'rpn_head') else model.bbox_head
    return head(feats)


def test_configs_found():
    names = {p.name for p in ALL_CONFIGS}
    assert {'fec_maskrcnn.py', 'fec_maskrcnn_base.py', 'fec_maskrcnn_large.py',
            'fec_retinanet.py', 'fec_semfpn_ade20k.py', 'fec_upernet_ade20k.py',
            'fec_small_in1k.py', 'fec_maskrcnn_demo.py', 'fec_semfpn_demo.py',
            'fec_cls_demo.py'} <= names


@pytest.mark.parametrize('path', ALL_CONFIGS, ids=lambda p: p.name)
def test_config_builds(path, demo_root):
    cfg = _config(path, demo_root)
    assert cfg.custom_imports == dict(imports=['fec_mm'], allow_failed_imports=False)
    reg = registry(cfg)

    model = reg.MODELS.build(model_cfg(cfg))
    assert isinstance(model.backbone, (FEC, ContextCluster))
    div = model.backbone.size_divisor
    # Whatever the image size, the data preprocessor makes a valid FEC input.
    if cfg.default_scope == 'mmdet':
        assert model.data_preprocessor.pad_size_divisor % div == 0
    elif cfg.default_scope == 'mmseg':
        assert all(s % div == 0 for s in model.data_preprocessor.size)
        assert model.data_preprocessor.test_cfg['size_divisor'] % div == 0
    model.eval()
    with torch.no_grad():
        out = _features_reach_heads(model, cfg, torch.randn(1, 3, 2 * div, 2 * div))
    flat = [t for o in out for t in (o if isinstance(o, (list, tuple)) else [o])] \
        if isinstance(out, (list, tuple)) else [out]
    assert flat and all(torch.isfinite(t).all() for t in flat)

    for loader in LOADERS:
        for transform in cfg[loader].dataset.pipeline:
            reg.TRANSFORMS.build(transform)

    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    assert type(optim_wrapper.optimizer).__name__ == 'AdamW'
    # No weight decay on norms, biases, layer scales and similarity scalars.
    decay_of = {id(p): g['weight_decay'] for g in optim_wrapper.optimizer.param_groups
                for p in g['params']}
    block = model.backbone.stages[-1][0]
    assert decay_of[id(block.layer_scale_1)] == 0
    assert decay_of[id(block.token_mixer.sim_alpha)] == 0
    assert decay_of[id(block.norm1.weight)] == 0
    assert decay_of[id(block.mlp.fc1.weight)] == cfg.optim_wrapper.optimizer.weight_decay > 0
    for sched in cfg.param_scheduler:
        sched = dict(sched)
        if sched.pop('convert_to_iter_based', False):
            cls = PARAM_SCHEDULERS.get(sched.pop('type'))
            cls.build_iter_from_epoch(optim_wrapper, epoch_length=10, **sched)
        else:
            PARAM_SCHEDULERS.build(dict(sched, optimizer=optim_wrapper))
    assert cfg.auto_scale_lr.enable is False

    if path in DEMO_CONFIGS:
        for loader in LOADERS:
            dataset = reg.DATASETS.build(cfg[loader].dataset)
            assert len(dataset) == (4 if loader == 'train_dataloader' else 2)
            sample = dataset[0]
            assert sample['inputs'].dim() == 3 and sample['inputs'].dtype == torch.uint8


def _scheduler(cfg, type_name):
    return next(s for s in cfg.param_scheduler if s.type == type_name)


@pytest.mark.parametrize('name, arch, widths', [
    ('fec_maskrcnn.py', 'small', [32, 64, 196, 320]),
    ('fec_maskrcnn_base.py', 'base', [64, 128, 320, 512]),
    ('fec_maskrcnn_large.py', 'large', [64, 128, 320, 512]),
])
def test_mask_rcnn_recipe(name, arch, widths):
    cfg = Config.fromfile(str(REAL_CONFIGS[0].parent / name))
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.arch) == ('FEC', arch)
    assert tuple(backbone.num_centers) == (7, 7, 7, 7)
    assert tuple(backbone.folds) == (2, 2, 1, 1)
    assert list(cfg.model.neck.in_channels) == widths
    assert cfg.model.roi_head.bbox_head.num_classes == 80
    assert cfg.train_dataloader.dataset.data_root == 'data/coco/'
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 2e-4, 1e-4)
    assert _scheduler(cfg, 'LinearLR').end == 500
    step = _scheduler(cfg, 'MultiStepLR')
    assert (list(step.milestones), step.gamma) == ([8, 9, 11], 0.2)
    assert cfg.train_cfg.max_epochs == 12
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 16
    assert 'find_unused_parameters' not in cfg


def test_semantic_fpn_recipe():
    cfg = Config.fromfile(str(REAL_CONFIGS[0].parent / 'fec_semfpn_ade20k.py'))
    assert tuple(cfg.model.backbone.num_centers) == (10, 10, 5, 5)
    assert tuple(cfg.model.backbone.folds) == (1, 1, 1, 1)
    assert tuple(cfg.model.data_preprocessor.size) == (512, 512)
    assert cfg.model.decode_head.num_classes == 150
    assert cfg.train_dataloader.dataset.data_root == 'data/ade/ADEChallengeData2016'
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-4, 1e-4)
    poly = _scheduler(cfg, 'PolyLR')
    assert (poly.power, poly.eta_min, poly.end) == (0.9, 0, 80000)
    assert cfg.train_cfg.max_iters == 80000
    assert cfg.train_dataloader.batch_size * 4 == cfg.auto_scale_lr.base_batch_size == 16


def test_imagenet_recipe():
    cfg = Config.fromfile(str(REAL_CONFIGS[0].parent / 'fec_small_in1k.py'))
    assert tuple(cfg.model.backbone.num_centers) == (4, 4, 2, 2)
    assert cfg.model.backbone.drop_path_rate == 0.1
    assert cfg.model.head.num_classes == 1000
    opt = cfg.optim_wrapper.optimizer
    assert (opt.type, opt.lr, opt.weight_decay) == ('AdamW', 1e-3, 0.05)
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size == 1024
    warmup, cosine = _scheduler(cfg, 'LinearLR'), _scheduler(cfg, 'CosineAnnealingLR')
    assert warmup.end == cosine.begin == 5 and cosine.end == 300
    assert cfg.train_cfg.max_epochs == 310  # 10 cool-down epochs at the final lr
    assert [a.type for a in cfg.model.train_cfg.augments] == ['Mixup', 'CutMix']
    assert cfg.model.head.loss.type == 'LabelSmoothLoss'
    assert {t.type for t in cfg.train_dataloader.dataset.pipeline} >= {
        'RandAugment', 'RandomErasing'}
    # AMP is the tools' --amp flag, never a default: it needs CUDA.
    assert cfg.optim_wrapper.get('type', 'OptimWrapper') == 'OptimWrapper'


def test_retinanet_has_no_unused_parameters():
    """RetinaNet's FPN starts at stride 8: the backbone builds no stride-4
    output, so every trainable parameter gets a gradient (no DDP
    find_unused_parameters)."""
    from mmdet.testing import demo_mm_inputs
    cfg = Config.fromfile(str(REAL_CONFIGS[0].parent / 'fec_retinanet.py'))
    reg = registry(cfg)
    assert 'find_unused_parameters' not in cfg
    model = reg.MODELS.build(cfg.model)
    packed = demo_mm_inputs(2, [[3, 96, 128], [3, 100, 90]], num_items=[3, 2],
                            num_classes=80)
    data = model.data_preprocessor(packed, True)
    assert data['inputs'].shape[-2:] == (128, 128)
    loss, _ = model.parse_losses(model(**data, mode='loss'))
    assert math.isfinite(loss.item())
    loss.backward()
    no_grad = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert no_grad == []
