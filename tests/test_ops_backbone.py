"""The FEC backbone on every ops implementation: same outputs and gradients, and
``torch.compile`` without a graph break at the fused ops."""
import os

import pytest
import torch

from fec_mm.models import FEC
from fec_mm.ops import cpu

needs_ext = pytest.mark.skipif(os.environ.get('FEC_MM_NO_EXT') == '1' or not cpu.is_available(),
                               reason='built without the CPU extension')
# A small FEC: every stage, both op kinds, folds and several centers.
TINY = dict(arch=dict(depths=(1, 1, 1, 1), widths=(16, 24, 32, 40), heads=(2, 2, 4, 4),
                      head_dim=8), num_centers=(3, 3, 2, 2), folds=(2, 2, 1, 1))


def _outputs_and_grads(impl, x):
    torch.manual_seed(0)
    model = FEC(**TINY, ops_impl=impl)
    outs = model(x)
    sum((o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum() for o in outs).backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return outs, grads


@needs_ext
def test_cpu_backbone_matches_reference():
    x = torch.randn(2, 3, 128, 96, generator=torch.Generator().manual_seed(1))
    outs, grads = _outputs_and_grads('cpu', x)
    ref_outs, ref_grads = _outputs_and_grads('reference', x)
    for o, r in zip(outs, ref_outs):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    # alpha, beta, the f/v convs and everything upstream get the same gradient
    assert any('sim_alpha' in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5,
                                   msg=name)


@needs_ext
def test_compiled_backbone_has_no_graph_break():
    torch.manual_seed(0)
    model = FEC(**TINY, ops_impl='cpu')
    # Batch 2: at batch 1 aot_eager trips over an eager GroupNorm stride check
    # (torch 2.11, a size-1 batch dim after points_to_map), unrelated to the ops.
    x = torch.randn(2, 3, 64, 64)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    names = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes
             if node.op == 'call_function'}
    assert {'fec_mm.cluster_encode_cpu.default', 'fec_mm.cluster_pool_cpu.default'} <= names
    # AOT autograd traces forward and backward through the fake implementations
    compiled = torch.compile(model, backend='aot_eager', fullgraph=True)
    outs = compiled(x)
    sum(o.sum() for o in outs).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    expected = model(x)
    sum(o.sum() for o in expected).backward()
    for o, r in zip(outs, expected):
        torch.testing.assert_close(o, r)
    for n, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads[n], p.grad, msg=n)
