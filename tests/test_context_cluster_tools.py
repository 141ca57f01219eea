"""fec-mm's tools on Context Clusters: demo training (the loss falls), FLOP
counts, benchmark rows, cluster maps, ONNX export."""
import math

import pytest
import torch
from demo_config_helpers import (
    CONFIG_DIR,
    load_demo_config,
    one_torch_thread,  # noqa: F401  (autouse fixture)
)
from mmengine.runner import Runner

from fec_mm.datasets import make_demo_data
from fec_mm.models import ContextCluster


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('demo')
    make_demo_data(str(root), num_train=4, num_val=2)
    return root


@pytest.mark.parametrize('name', ['coc_maskrcnn_demo.py', 'coc_semfpn_demo.py'])
def test_coc_demo_configs_train_and_the_loss_falls(name, demo_root, tmp_path):
    """A few optimizer steps of the demo config's model and optimizer on its
    first training batch: the loss falls and the backbone's weights move."""
    cfg = load_demo_config(CONFIG_DIR / 'demo' / name, demo_root)
    cfg.work_dir = str(tmp_path)
    runner = Runner.from_cfg(cfg)
    model = runner.model
    assert isinstance(model.backbone, ContextCluster)
    optim_wrapper = runner.build_optim_wrapper(cfg.optim_wrapper)
    torch.manual_seed(0)
    batch = next(iter(runner.build_dataloader(cfg.train_dataloader)))
    before = {n: p.detach().clone() for n, p in model.backbone.named_parameters()}
    model.train()
    losses = []
    for _ in range(6):
        log_vars = model.train_step(batch, optim_wrapper)
        losses.append(float(log_vars['loss']))
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.9 * losses[0], losses
    moved = [n for n, p in model.backbone.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) > 0.9 * len(before)
