"""A few-iteration CPU train + val of each demo config on a tiny demo data
set, through mmengine's Runner: losses are finite, the backbone's weights
move, and the evaluator reports its metrics."""
import math

import pytest
import torch
from demo_config_helpers import (
    CONFIG_DIR,
    load_demo_config,
    one_torch_thread,  # noqa: F401  (autouse fixture)
)
from mmengine.hooks import Hook
from mmengine.runner import Runner

from fec_mm.datasets import make_demo_data
from fec_mm.datasets.demo_report import check_run, summarize_run


class _Recorder(Hook):
    """Keeps the training losses and the validation metrics."""

    def __init__(self) -> None:
        self.losses = []
        self.metrics = {}

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        self.losses.append(float(outputs['loss']))

    def after_val_epoch(self, runner, metrics=None) -> None:
        self.metrics.update(metrics or {})


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=8, num_val=4)
    return root


@pytest.mark.parametrize('name, metrics', [
    ('fec_maskrcnn_demo.py', ['coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP']),
    ('fec_semfpn_demo.py', ['mIoU', 'aAcc']),
    ('fec_cls_demo.py', ['accuracy/top1']),
])
def test_demo_config_trains_and_evaluates(name, metrics, demo_root, tmp_path):
    cfg = load_demo_config(CONFIG_DIR / 'demo' / name, demo_root)
    # 2-3 iterations, then one validation.
    if 'max_iters' in cfg.train_cfg:
        cfg.train_cfg.update(max_iters=3, val_interval=3)
    else:
        cfg.train_cfg.update(max_epochs=2 if cfg.default_scope == 'mmpretrain' else 1,
                             val_interval=1)
    if cfg.default_scope == 'mmdet':
        # An untrained detector keeps 100 boxes (and masks) per image: fewer.
        cfg.model.test_cfg.rpn.max_per_img = 50
        cfg.model.test_cfg.rcnn.max_per_img = 10
    cfg.default_hooks.checkpoint.update(interval=1000, save_last=False)
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    recorder = _Recorder()
    runner.register_hook(recorder)
    backbone = runner.model.backbone
    before = {n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad}

    runner.train()

    assert 2 <= len(recorder.losses) <= 3
    assert all(math.isfinite(v) and v > 0 for v in recorder.losses)
    after = dict(backbone.named_parameters())
    moved = [n for n, p in before.items() if not torch.equal(p, after[n].detach())]
    assert len(moved) > 0.9 * len(before), f'{len(before) - len(moved)} weights did not move'
    for key in metrics:
        assert key in recorder.metrics, f'{key} missing from {sorted(recorder.metrics)}'
        assert math.isfinite(recorder.metrics[key]) and recorder.metrics[key] >= 0

    # The demo's summary reads the same numbers back from mmengine's scalar
    # log, where each loss is a mean over the log processor's window.
    summary = summarize_run(str(tmp_path))
    window = cfg.get('log_processor', {}).get('window_size', 10)
    assert summary['loss_first'] == pytest.approx(recorder.losses[0], rel=1e-3)
    assert summary['loss_last'] == pytest.approx(
        sum(recorder.losses[-window:]) / len(recorder.losses[-window:]), rel=1e-3)
    for key in metrics:
        assert summary[key] == pytest.approx(recorder.metrics[key])


def test_demo_check_names_what_failed():
    good = {'loss_first': 3.0, 'loss_last': 1.0, 'coco/bbox_mAP': 0.2, 'coco/segm_mAP': 0.1}
    assert check_run(good, ['coco/bbox_mAP', 'coco/segm_mAP']) == []
    bad = dict(good, loss_last=3.5, **{'coco/segm_mAP': 0.0})
    problems = check_run(bad, ['coco/bbox_mAP', 'coco/segm_mAP', 'coco/bbox_mAP_50'])
    assert len(problems) == 3
    assert 'did not fall' in problems[0] and 'coco/segm_mAP is 0.0' in problems[1]
    assert 'coco/bbox_mAP_50 missing' in problems[2]
