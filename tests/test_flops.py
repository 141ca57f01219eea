"""FLOPs in mmengine's counter (what mmdet/mmseg/mmpretrain get_flops call):
FEC's fused ops and chunked MLP are counted, by hand count, the same for
every ops_impl; the get_flops CLI on a config."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from mmengine.analysis import ActivationAnalyzer, FlopAnalyzer, get_model_complexity_info
from mmengine.analysis.complexity_analysis import _DEFAULT_SUPPORTED_FLOP_OPS

import fec_mm  # noqa: F401  (registers the handles)
from fec_mm.analysis import count_flops
from fec_mm.models import FEC
from fec_mm.models.cluster_block import ClusterBlock
from fec_mm.models.cluster_pooling import ClusterPooling
from fec_mm.ops import channel_mlp, cluster_assign

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ('reference', 'auto', 'cpu')


def _quiet(analyzer):
    return analyzer.unsupported_ops_warnings(False).uncalled_modules_warnings(False)


def block_hand_count(B, C, H, W, heads, head_dim, ratio, nc, fold):
    """ClusterBlock on (B, C, H, W), multiply-adds as fvcore counts them:
    2 GroupNorms (5 per value), f and v 1x1 convs, the adaptive pooling of
    both to centers (1 per input value), the M·N·d cosine matrix per region
    and head, the 1x1 projection, the MLP's two products."""
    D, P = heads * head_dim, H * W
    regions, N, M = B * heads * fold * fold, P // (fold * fold), nc * nc
    gn = 2 * 5 * B * C * P
    convs = 2 * B * P * C * D + B * P * D * C
    center_pools = 2 * B * D * P
    similarity = regions * M * N * head_dim
    mlp = 2 * B * P * C * ratio * C
    return gn + convs + center_pools + similarity + mlp, center_pools + similarity


def pool_hand_count(B, Cin, Cout, H, W, fold):
    """ClusterPooling: 3x3 stride-2 skip conv, f and v 1x1 convs, the cosine
    matrix of every point with the N/4 centers of its region, the GroupNorm."""
    P, N = H * W, H * W // (fold * fold)
    skip = B * Cout * Cin * 9 * P // 4
    convs = 2 * B * Cout * Cin * P
    similarity = B * fold * fold * (N // 4) * N * Cout
    gn = 5 * B * Cout * P // 4
    return skip + convs + similarity + gn, similarity


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('fold,aggregation', [(1, 'mean'), (2, 'mean'), (2, 'similarity')])
def test_cluster_block_equals_hand_count(impl, fold, aggregation):
    """FEC's block and Context Clusters' (aggregation='similarity') count alike."""
    torch.manual_seed(0)
    B, C, H, W, heads, hd, ratio, nc = 2, 16, 8, 12, 2, 8, 4, 2
    block = ClusterBlock(C, heads, hd, ratio, nc, fold, ops_impl=impl,
                         aggregation=aggregation).eval()
    count = count_flops(block, (torch.randn(B, C, H, W),))
    total, clustering = block_hand_count(B, C, H, W, heads, hd, ratio, nc, fold)
    assert count.flops == total
    assert count.clustering == clustering
    assert not {op for op in count.unsupported if 'fec_mm' in op or 'PythonOp' in op}


@pytest.mark.parametrize('impl', IMPLS)
@pytest.mark.parametrize('fold', [1, 2])
def test_cluster_pooling_equals_hand_count(impl, fold):
    B, Cin, Cout, H, W = 1, 8, 16, 8, 16
    pool = ClusterPooling(Cin, Cout, fold, dict(type='GN', num_groups=1), impl).eval()
    count = count_flops(pool, (torch.randn(B, Cin, H, W),))
    assert (count.flops, count.clustering) == pool_hand_count(B, Cin, Cout, H, W, fold)


class _Assign(nn.Module):
    def __init__(self, impl):
        super().__init__()
        self.impl = impl

    def forward(self, points, centers):
        return cluster_assign(points, centers, impl=self.impl)[1]


class _Mlp(nn.Module):
    def __init__(self, impl):
        super().__init__()
        self.impl = impl
        self.fc1, self.fc2 = nn.Linear(6, 20), nn.Linear(20, 5)

    def forward(self, x):
        return channel_mlp(x, self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias,
                           impl=self.impl)


@pytest.mark.parametrize('impl', ['reference', 'cpu'])
def test_public_functions_count_as_their_matmuls(impl):
    R, N, M, d = 3, 10, 4, 7
    points, centers = torch.randn(R, N, d), torch.randn(R, M, d)
    assert _quiet(FlopAnalyzer(_Assign(impl), (points, centers))).total() == R * M * N * d
    mlp_impl = 'reference' if impl == 'reference' else 'chunked'
    x = torch.randn(2, 6, 3, 5)
    analyzer = _quiet(FlopAnalyzer(_Mlp(mlp_impl), (x,)))
    assert analyzer.total() == 2 * 15 * (6 * 20 + 20 * 5)
    assert set(analyzer.by_operator()) == {'linear'}
    acts = _quiet(ActivationAnalyzer(_Mlp(mlp_impl), (x,))).total()
    assert acts == 2 * 15 * (20 + 5)


def test_every_fused_forward_op_has_a_handle():
    forward_ops = [f'fec_mm::{name}' for name in dir(torch.ops.fec_mm)
                   if name.startswith('cluster_') and 'backward' not in name]
    assert len(forward_ops) == 6  # assign/encode/pool x cpu/triton
    assert all(op in _DEFAULT_SUPPORTED_FLOP_OPS for op in forward_ops)


def test_auto_and_reference_agree_for_fec_small_224():
    x = torch.randn(1, 3, 224, 224)
    counts, acts = {}, {}
    for impl in ('reference', 'auto'):
        model = FEC('small', ops_impl=impl).eval()
        counts[impl] = count_flops(model, (x,))
        acts[impl] = _quiet(ActivationAnalyzer(model, (x,))).total()
        # The users' API gives the same total.
        info = get_model_complexity_info(model, inputs=(x,), show_table=False,
                                         show_arch=False)
        assert info['flops'] == counts[impl].flops
    ref, auto = counts['reference'], counts['auto']
    assert (auto.flops, auto.clustering) == (ref.flops, ref.clustering)
    assert acts['auto'] == acts['reference']
    # What the issue measured with 'reference' (the paper prints 1.4 G).
    assert ref.flops == 1_365_956_928
    assert ref.by_operator['bmm'] == auto.by_operator['cluster_encode'] + \
        auto.by_operator['cluster_pool']


def test_no_never_called_fec_modules():
    block = ClusterBlock(16, 2, 8, 4, 2, 1).eval()
    analyzer = _quiet(FlopAnalyzer(block, (torch.randn(1, 16, 8, 8),)))
    analyzer.total()
    # What mmengine warns about: uncalled modules that have a forward.
    warned = {m for m in analyzer.uncalled_modules() if analyzer._has_forward(m)}
    assert warned == set()
    assert {'mlp.fc1', 'mlp.fc2', 'token_mixer.proj'} <= analyzer.uncalled_modules()


def _cli_flops(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS='1')
    out = subprocess.run([sys.executable, 'tools/analysis_tools/get_flops.py', *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    flops = int(re.search(r'^Flops: \S+ \((\d+)\)', out.stdout, re.M).group(1))
    clustering = int(re.search(r'clustering ops: \S+ \((\d+)\)', out.stdout).group(1))
    params = int(re.search(r'^Params: \S+ \((\d+)\)', out.stdout, re.M).group(1))
    return flops, clustering, params, out.stdout


def test_get_flops_cli_on_classifier_config():
    # Shape 60 is padded to 64, the backbone's size divisor.
    flops, clustering, params, stdout = _cli_flops('configs/fec_small_in1k.py', '--shape', '60')
    assert 'from (60, 60) to (64, 64)' in stdout
    backbone = FEC('small', out_indices=(3,), ops_impl='reference').eval()
    expected = count_flops(backbone, (torch.randn(1, 3, 64, 64),))
    head = 320 * 1000 + 320 * 2 * 2  # linear head + global average pooling
    assert flops == expected.flops + head
    assert clustering == expected.clustering
    assert params == 5_727_528  # docs/notes/design.md §3, with the 1000-class head


def test_get_flops_cli_rejects_bad_shape():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, 'tools/analysis_tools/get_flops.py',
                          'configs/fec_small_in1k.py', '--shape', '1', '2', '3'],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and '--shape takes one or two' in out.stderr
