"""torch.compile of the FEC backbone: no graph break, compiled = eager.

Inductor compiles are slow on small CPUs, so the models are tiny (one block
per stage, narrow) and the inputs small; the values and gradients are checked
with the ``aot_eager`` backend (Dynamo + AOTAutograd, the parts our ops must
support: fake kernels, autograd formulas, no break) and one Inductor training
step (forward and backward through generated code).
"""
import copy

import pytest
import torch

from fec_mm.models import FEC

TINY = dict(depths=(1, 1, 1, 1), widths=(16, 32, 48, 64), heads=(2, 2, 2, 2), head_dim=8)


def tiny_fec(ops_impl: str = 'auto', **kwargs) -> FEC:
    torch.manual_seed(0)
    return FEC(arch=TINY, ops_impl=ops_impl, **kwargs)


def train_step(model, x, weights, optimizer=None):
    """Forward, a fixed linear loss, backward (and one SGD step)."""
    outs = model(x)
    loss = sum((o * w).sum() for o, w in zip(outs, weights))
    loss.backward()
    if optimizer is not None:
        optimizer.step()
    return [o.detach() for o in outs]


@pytest.mark.parametrize('ops_impl', ['auto', 'reference'])
@pytest.mark.parametrize('training', [False, True])
def test_no_graph_break(ops_impl, training):
    # 2 images of 160² take the MLP past one CPU block of pixels (the chunked
    # loop's strided `out=` was a graph break) and run the loader's first call
    # inside the trace (its import was a break on every dispatch).
    model = tiny_fec(ops_impl, folds=(2, 1, 1, 1), drop_path_rate=0.1).train(training)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, 160, 160))
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


def _compare_step(backend: str, size, optimizer: bool):
    eager = tiny_fec()
    compiled_model = copy.deepcopy(eager)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(2))
                   for o in eager(x)]
    opts = [torch.optim.SGD(m.parameters(), lr=0.1) if optimizer else None
            for m in (eager, compiled_model)]
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, backend=backend, fullgraph=True)
    outs_eager = train_step(eager, x, weights, opts[0])
    outs_compiled = train_step(compiled, x, weights, opts[1])
    for a, b in zip(outs_eager, outs_compiled):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        assert (a.grad is None) == (b.grad is None), name
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6, msg=name)
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6, msg=name)
    # Inference (eval mode: a recompile for the new mode, still one graph).
    eager.eval()
    compiled_model.eval()
    with torch.no_grad():
        for a, b in zip(eager(x), compiled(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)


def test_compiled_training_step_and_inference_match_eager():
    # An odd size: the internal padding and cropping compile too.
    _compare_step('aot_eager', (70, 101), optimizer=True)


def test_inductor_training_step_matches_eager():
    """Forward and backward through Inductor's generated code, on the stem
    and one cluster block (the encoder op, the MLP, the norms): few enough
    kernels to compile in CI time (the pooling op goes through the same
    fake kernels and autograd formulas, checked with aot_eager above)."""
    eager = tiny_fec(out_indices=(0,))
    compiled_model = copy.deepcopy(eager)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        weights = [torch.randn(o.shape) for o in eager(x)]
    torch._dynamo.reset()
    compiled = torch.compile(compiled_model, fullgraph=True)
    for a, b in zip(train_step(eager, x, weights), train_step(compiled, x, weights)):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    for (name, a), b in zip(eager.named_parameters(), compiled_model.parameters()):
        if a.grad is not None:
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-6, msg=name)


@pytest.mark.parametrize('config,neck', [('fec_cls_demo.py', None),
                                         ('fec_semfpn_demo.py', 'neck'),
                                         ('fec_maskrcnn_demo.py', 'neck')])
def test_whole_library_models_have_no_graph_break(config, neck):
    """mmpretrain's and mmseg's models (``mode='tensor'``) are one graph; an
    mmdet detector's backbone + FPN (``extract_feat``) too (its RoI heads and
    NMS are mmdet's, data-dependent by nature)."""
    from demo_config_helpers import CONFIG_DIR, model_cfg, registry
    from mmengine.config import Config
    cfg = Config.fromfile(str(CONFIG_DIR / 'demo' / config))
    tiny = dict(TINY, _delete_=True)
    cfg.merge_from_dict({'model.backbone.arch': tiny})
    if neck:
        cfg.merge_from_dict({'model.neck.in_channels': list(TINY['widths'])})
    else:
        cfg.merge_from_dict({'model.head.in_channels': TINY['widths'][-1]})
    torch.manual_seed(0)
    model = registry(cfg).MODELS.build(model_cfg(cfg)).eval()
    x = torch.randn(2, 3, 64, 96)
    torch._dynamo.reset()
    if cfg.default_scope == 'mmdet':
        explained = torch._dynamo.explain(model.extract_feat)(x)
    else:
        explained = torch._dynamo.explain(model)(x, mode='tensor')
    reasons = [b.reason.splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0 and explained.graph_count == 1, reasons
