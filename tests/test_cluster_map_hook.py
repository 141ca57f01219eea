"""ClusterMapHook: a demo run writes the sheets of its fixed validation images
through the visualizer every ``interval`` validations, logs the per-stage
numbers, and the demo summary still reads the validation metrics."""
import importlib
import json
import logging

import numpy as np
import pytest
from demo_config_helpers import (
    CONFIG_DIR,
    load_demo_config,
    one_torch_thread,  # noqa: F401  (autouse fixture)
)
from mmengine.registry import HOOKS
from mmengine.runner import Runner
from PIL import Image

from fec_mm.datasets import make_demo_data
from fec_mm.datasets.demo_report import read_scalars, summarize_run, validation_metrics
from fec_mm.visualization.cluster_map_hook import SCALAR_KEYS, SCALAR_PREFIX, ClusterMapHook


def test_registered_in_the_root_registry_and_on_in_the_demo_configs():
    assert HOOKS.get('ClusterMapHook') is ClusterMapHook
    for scope in ('mmdet', 'mmseg', 'mmpretrain'):  # their registries fall back to the root
        assert importlib.import_module(f'{scope}.registry').HOOKS.get(
            'ClusterMapHook') is ClusterMapHook
    for name in ('fec_cls_demo.py', 'fec_maskrcnn_demo.py', 'fec_semfpn_demo.py'):
        from mmengine.config import Config
        cfg = Config.fromfile(str(CONFIG_DIR / 'demo' / name))
        assert [h['type'] for h in cfg.custom_hooks] == ['ClusterMapHook']
    with pytest.raises(ValueError, match='interval must be an int >= 1'):
        ClusterMapHook(interval=0)
    # Checked when the run starts: a stage the backbone lacks is an error, a
    # backbone that is not FEC makes the hook step aside with a warning.
    import torch.nn as nn
    from mmdet.models.test_time_augs import DetTTAModel
    from mmengine.logging import MMLogger
    from mmseg.models import SegTTAModel

    class Model(nn.Module):
        def test_step(self, data):  # what TTA models require of what they wrap
            return data

    class Runner_:
        model = Model()
    Runner_.model.backbone = nn.Conv2d(3, 3, 1)
    hook = ClusterMapHook()
    logger = MMLogger.get_current_instance()
    warnings = []
    handler = type('H', (logging.Handler,), {'emit': lambda self, r: warnings.append(
        r.getMessage())})()
    logger.addHandler(handler)
    try:
        hook.before_run(Runner_)
    finally:
        logger.removeHandler(handler)
    assert not hook._active
    assert any('Model has no FEC backbone (backbone: Conv2d)' in w for w in warnings)
    hook.after_val_epoch(Runner_)  # draws nothing, raises nothing
    from fec_mm.models import FEC
    Runner_.model.backbone = FEC(arch='small', out_indices=(2,))
    with pytest.raises(ValueError, match='no pooling stage 3: the stages with cluster maps '
                       'are 1..2'):
        ClusterMapHook(stages=[3]).before_run(Runner_)
    # Found through test-time augmentation models (mmdet test.py --tta).
    inner = Runner_.model
    for tta in (DetTTAModel(module=inner), SegTTAModel(module=inner)):
        Runner_.model = tta
        hook = ClusterMapHook(stages=[1, 2])
        hook.before_run(Runner_)
        assert hook._active
    Runner_.model = inner


def test_validation_metrics_skip_the_hooks_records():
    records = [{'loss': 2.0, 'lr': 0.1, 'step': 1},
               {f'{SCALAR_PREFIX}stage1/effective': 3.0, 'step': 1},
               {'accuracy/top1': 50.0, 'step': 1},
               {'loss': 1.0, 'lr': 0.1, 'step': 2},
               {'accuracy/top1': 75.0, 'data_time': 0.1, 'step': 2},
               {f'{SCALAR_PREFIX}stage1/effective': 4.0, 'step': 2}]
    assert validation_metrics(records) == {'accuracy/top1': 75.0, 'data_time': 0.1}
    assert validation_metrics(records[:1]) == {}


def test_one_demo_run_writes_the_images(tmp_path):
    root = tmp_path / 'demo'
    make_demo_data(str(root), num_train=8, num_val=3, tasks=('imagenet',))
    cfg = load_demo_config(CONFIG_DIR / 'demo' / 'fec_cls_demo.py', root)
    # Two epochs, a validation after each, the hook on every second one.
    cfg.train_cfg.update(max_epochs=2, val_interval=1)
    cfg.custom_hooks = [dict(type='ClusterMapHook', interval=2, num_images=2, groups=3)]
    cfg.default_hooks.checkpoint.update(interval=1000, save_last=False)
    cfg.default_hooks.logger.interval = 1
    cfg.work_dir = str(tmp_path / 'work')
    runner = Runner.from_cfg(cfg)
    runner.train()

    images = sorted((tmp_path / 'work').glob('*/vis_data/vis_image/*.png'))
    # Epoch 1's validation is skipped (interval 2); epoch 2's draws both images.
    assert [p.name for p in images] == ['cluster_maps_0_2.png', 'cluster_maps_1_2.png']
    for p in images:
        sheet = np.asarray(Image.open(p))
        assert sheet.ndim == 3 and sheet.shape[1] >= 4 * 320 and sheet.std() > 10
    records = read_scalars(str(tmp_path / 'work'))
    ours = [r for r in records if any(k.startswith(SCALAR_PREFIX) for k in r)]
    assert len(ours) == 1 and ours[0]['step'] == 2
    expected = {f'{SCALAR_PREFIX}stage{k}/{n}' for k in (1, 2, 3) for n in SCALAR_KEYS}
    assert set(ours[0]) - {'step'} == expected
    # 64 x 64 crops: stage 3 is 2 x 2, so at most 4 non-empty clusters.
    assert 1 <= ours[0][f'{SCALAR_PREFIX}stage3/non_empty'] <= 4
    assert 0 <= ours[0][f'{SCALAR_PREFIX}stage1/own_cell_share'] <= 1
    summary = summarize_run(str(tmp_path / 'work'))
    last_val = [r for r in records if 'accuracy/top1' in r][-1]
    assert summary['accuracy/top1'] == last_val['accuracy/top1']
    assert not any(k.startswith(SCALAR_PREFIX) for k in summary)
    json.dumps(summary)
