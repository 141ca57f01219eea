"""Half-precision autocast and the clustering: fp32_assignments makes each
layer's argmax the float32 one; the flip counter compares with float32."""
import pytest
import torch

from fec_mm.analysis.low_precision import assignment_flips, markdown_table
from fec_mm.models import FEC, record_assignments
from fec_mm.models.cluster_encoder import ClusterEncoder
from fec_mm.models.cluster_pooling import ClusterPooling

TINY = dict(depths=(1, 1, 1, 1), widths=(16, 32, 48, 64), heads=(2, 2, 2, 2), head_dim=8)


def _index(layer, x, autocast):
    with torch.no_grad(), record_assignments(layer) as rec, \
            torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        layer(x)
    return rec.records[-1].index


@pytest.mark.parametrize('ops_impl', ['reference', 'auto'])
@pytest.mark.parametrize('kind', ['encode', 'pool'])
def test_fp32_assignments_are_the_float32_ones_under_autocast(ops_impl, kind):
    torch.manual_seed(0)
    if kind == 'encode':
        layer = ClusterEncoder(32, 2, 16, num_centers=4, fold=1, ops_impl=ops_impl)
    else:
        layer = ClusterPooling(32, 48, fold=1, norm_cfg=dict(type='GN', num_groups=1),
                               ops_impl=ops_impl)
    x = torch.randn(2, 32, 64, 64)
    exact = _index(layer, x, autocast=False)
    assert torch.equal(_index(layer, x, autocast=True), exact) is False  # bf16 flips some
    layer.fp32_assignments = True
    assert torch.equal(_index(layer, x, autocast=True), exact)
    assert torch.equal(_index(layer, x, autocast=False), exact)  # no effect without autocast


def test_fp32_assignments_leave_float32_unchanged():
    x = torch.randn(1, 3, 64, 64)
    outs = []
    for exact in (False, True):
        torch.manual_seed(0)
        with torch.no_grad():
            outs.append(FEC(arch=TINY, fp32_assignments=exact).eval()(x))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


def test_flip_report():
    torch.manual_seed(0)
    backbone = FEC(arch=TINY).eval()
    reports = assignment_flips(backbone, torch.randn(1, 3, 96, 96), dtypes=(torch.bfloat16,))
    assert [(r.dtype, r.fp32_assignments) for r in reports] == [
        ('float32', False), ('bfloat16', False), ('bfloat16', True)]
    names = [n for n, m in backbone.named_modules()
             if isinstance(m, (ClusterEncoder, ClusterPooling))]
    assert sorted(reports[0].flips) == sorted(names)
    assert all(v == 0 for v in reports[0].flips.values()) and reports[0].output_error == [0] * 4
    assert all(0 <= v <= 1 for r in reports for v in r.flips.values())
    assert max(reports[1].output_error) > 0
    assert not any(layer.fp32_assignments for layer in backbone.modules()
                   if isinstance(layer, (ClusterEncoder, ClusterPooling)))
    table = markdown_table(reports)
    assert table.splitlines()[0] == '| layer | float32 | bfloat16 | bfloat16 + fp32_assignments |'
    assert len(table.splitlines()) == 2 + len(names) + 1
