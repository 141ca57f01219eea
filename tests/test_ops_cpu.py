"""The compiled CPU kernels (fec_mm._ext through ``impl='cpu'``) against the reference.

Also covers the dispatch of ``fec_mm.ops`` ('auto', errors, fallback without
the extension) and the ``torch.library`` registration of the fused ops.
"""
import functools
import os
import subprocess
import sys

import pytest
import torch

from fec_mm.ops import AGGREGATIONS, cluster_assign, cluster_encode, cluster_pool, cpu
from fec_mm.ops.cluster_ops import resolve_impl

pytestmark = pytest.mark.skipif(
    os.environ.get('FEC_MM_NO_EXT') == '1', reason='built without the CPU extension')

# (R, N, M, d): odd sizes, M = 1, N < M, N over the 128-point tile, M over
# the 512-center tile of the kernel (ties across tiles), head-like d.
SHAPES = [(1, 1, 1, 1), (2, 9, 4, 3), (3, 3, 6, 4), (2, 7, 1, 5), (4, 257, 49, 24),
          (1, 150, 600, 5), (2, 64, 16, 64)]


def _inputs(R, N, M, d, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(R, n, d, generator=gen).to(dtype) for n in (N, N, M, M)]


def _scalars(alpha, beta, dtype=torch.float32):
    return torch.tensor([alpha], dtype=dtype), torch.tensor([beta], dtype=dtype)


def test_extension_is_built():
    assert cpu.is_available(), 'fec_mm._ext is missing: run `pip install -e .`'
    assert resolve_impl('cluster_encode', 'auto', 'cpu').__name__ == 'cluster_encode_cpu'


@pytest.mark.parametrize('R,N,M,d', SHAPES)
def test_assign_and_pool_match_reference(R, N, M, d):
    points, values, centers, value_centers = _inputs(R, N, M, d, seed=R + N + M + d)
    index, cos = cluster_assign(points, centers, impl='cpu')
    ref_index, ref_cos = cluster_assign(points, centers, impl='reference')
    assert index.dtype == torch.int64 and torch.equal(index, ref_index)
    torch.testing.assert_close(cos, ref_cos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        cluster_pool(points, values, centers, value_centers, impl='cpu'),
        cluster_pool(points, values, centers, value_centers, impl='reference'),
        rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('R,N,M,d', SHAPES)
@pytest.mark.parametrize('alpha,beta', [(1.0, 0.0), (2.5, -0.7), (-1.3, 0.4), (0.0, 0.3)])
@pytest.mark.parametrize('aggregation', AGGREGATIONS)
def test_encode_matches_reference(R, N, M, d, alpha, beta, aggregation):
    args = [*_inputs(R, N, M, d, seed=3 * R + N + M + d), *_scalars(alpha, beta)]
    torch.testing.assert_close(cluster_encode(*args, impl='cpu', aggregation=aggregation),
                               cluster_encode(*args, impl='reference', aggregation=aggregation),
                               rtol=1e-5, atol=1e-6)


def _grads(fn, args):
    args = [a.detach().clone().requires_grad_() for a in args]
    out = fn(*args)
    out = out[1] if isinstance(out, tuple) else out
    # a fixed random cotangent, so that every output element matters
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0)).to(out.dtype)
    (out * weight).sum().backward()
    return [a.grad for a in args]


@pytest.mark.parametrize('R,N,M,d', [(2, 9, 4, 3), (3, 3, 6, 4), (4, 257, 49, 24),
                                     (1, 150, 600, 5)])
@pytest.mark.parametrize('dtype,tol', [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_gradients_match_reference(R, N, M, d, dtype, tol):
    tensors = _inputs(R, N, M, d, seed=11 + N, dtype=dtype)
    enc = [*tensors, *_scalars(1.7, -0.3, dtype)]
    similarity = functools.partial(cluster_encode, aggregation='similarity')
    for op, args in ((cluster_encode, enc), (similarity, enc), (cluster_pool, tensors),
                     (cluster_assign, [tensors[0], tensors[2]])):
        got = _grads(lambda *a: op(*a, impl='cpu'), args)
        expected = _grads(lambda *a: op(*a, impl='reference'), args)
        for g, e in zip(got, expected):
            if e is None:  # pooling: points and centers only pick the assignment
                assert g is None
            else:
                torch.testing.assert_close(g, e, rtol=tol, atol=tol)


def test_gradcheck_float64():
    points, values, centers, value_centers = _inputs(2, 12, 3, 4, seed=5, dtype=torch.float64)
    alpha, beta = _scalars(1.2, 0.3, torch.float64)
    enc = [t.requires_grad_() for t in (points, values, centers, value_centers, alpha, beta)]
    for aggregation in AGGREGATIONS:
        assert torch.autograd.gradcheck(
            lambda *a: cluster_encode(*a, impl='cpu', aggregation=aggregation), enc)
    assert torch.autograd.gradcheck(
        lambda v, vc: cluster_pool(points, v, centers, vc, impl='cpu'), (values, value_centers))
    assert torch.autograd.gradcheck(
        lambda p, c: cluster_assign(p, c, impl='cpu')[1], (points, centers))


def test_ties_go_to_lowest_center_across_tiles():
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(1, 600, 8, generator=gen)
    centers[0, 550] = 2 * centers[0, 7]     # same direction, another tile
    centers[0, 551] = centers[0, 7]         # the same center, same tile as 550
    points = centers[:, [7, 550, 551]] + 1e-3 * torch.randn(1, 3, 8, generator=gen)
    index, _ = cluster_assign(points, centers, impl='cpu')
    assert index.tolist() == cluster_assign(points, centers, impl='reference')[0].tolist()
    assert index.tolist() == [[7, 7, 7]]
    # alpha = 0: every similarity is sigmoid(beta), all points join center 0
    # (as torch.argmax in the reference); alpha < 0 picks the least similar.
    values = torch.randn(1, 3, 8, generator=gen)
    for alpha in (0.0, -2.0):
        args = (points, values, centers, centers, *_scalars(alpha, 0.5))
        torch.testing.assert_close(cluster_encode(*args, impl='cpu'),
                                   cluster_encode(*args, impl='reference'))


def _exact_index(points, centers, sign=1.0):
    """argmax of the cosine in float64, ties to the lowest index."""
    pn = torch.nn.functional.normalize(points.double(), dim=-1)
    cn = torch.nn.functional.normalize(centers.double(), dim=-1)
    return (sign * pn @ cn.transpose(1, 2)).argmax(-1)


needs_prefilter = pytest.mark.skipif(
    not (cpu.is_available() and cpu.ext().prefilter_available()),
    reason='this CPU has no bf16 dot products: the bf16 pre-pass is not used')


@needs_prefilter
def test_bf16_prepass_finds_the_exact_argmax():
    # Centers in pairs 2e-3 apart and points next to them: bf16 scores (~4e-3
    # apart near 1) cannot tell a pair apart, the exact rescoring must.
    gen = torch.Generator().manual_seed(3)
    centers = torch.randn(2, 700, 64, generator=gen)
    centers[:, 1::2] = centers[:, 0::2] + 2e-3 * torch.randn(2, 350, 64, generator=gen)
    pick = torch.randint(0, 700, (3000,), generator=gen)
    points = centers[:, pick] + 1e-3 * torch.randn(2, 3000, 64, generator=gen)
    index, cos = cluster_assign(points, centers, impl='cpu')
    expected = _exact_index(points, centers)
    assert torch.equal(index, expected)
    torch.testing.assert_close(cos, cluster_assign(points, centers, impl='reference')[1])
    # alpha < 0 clusters on the negated centers through the same pre-pass
    values = torch.randn(2, 3000, 64, generator=gen)
    args = (points, values, centers, centers, *_scalars(-1.5, 0.2))
    torch.testing.assert_close(cluster_encode(*args, impl='cpu'),
                               cluster_encode(*args, impl='reference'))


@needs_prefilter
def test_bf16_prepass_ties_and_crowds():
    gen = torch.Generator().manual_seed(4)
    # exact duplicates (few per point): the lowest index wins
    centers = torch.randn(1, 300, 16, generator=gen).repeat(1, 2, 1)
    points = torch.randn(1, 500, 16, generator=gen)
    index, _ = cluster_assign(points, centers, impl='cpu')
    assert torch.equal(index, _exact_index(points, centers))
    assert index.max() < 300
    # a crowd of identical centers (more candidates than the pre-pass keeps,
    # as in padding) and zero points: the plain path decides, ties to the lowest
    centers = torch.randn(1, 1, 16, generator=gen).repeat(1, 400, 1)
    centers[0, 399] = torch.randn(16, generator=gen)
    points = torch.cat([centers[:, [0, 399, 5]], torch.zeros(1, 2, 16)], 1)
    index, _ = cluster_assign(points, centers, impl='cpu')
    assert index.tolist() == [[0, 399, 0, 0, 0]]
    assert index.tolist() == cluster_assign(points, centers, impl='reference')[0].tolist()


def test_results_are_deterministic():
    args = [*_inputs(3, 300, 70, 24, seed=2), *_scalars(1.1, 0.2)]
    for aggregation in AGGREGATIONS:
        runs = [_grads(lambda *a: cluster_encode(*a, impl='cpu', aggregation=aggregation),
                       args) for _ in range(2)]
        assert all(torch.equal(a, b) for a, b in zip(*runs))
    outs = [cluster_pool(*args[:4], impl='cpu') for _ in range(2)]
    assert torch.equal(*outs)


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_inputs_run_in_float32(dtype):
    tensors = _inputs(2, 40, 9, 24, seed=4, dtype=dtype)
    alpha, beta = _scalars(1.0, 0.0)
    out = cluster_encode(*tensors, alpha, beta, impl='cpu')
    assert out.dtype == dtype
    expected = cluster_encode(*(t.float() for t in tensors), alpha, beta, impl='reference')
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)
    grads = _grads(lambda *a: cluster_encode(*a, impl='cpu'), [*tensors, alpha, beta])
    assert [g.dtype for g in grads[:4]] == [dtype] * 4


def test_non_contiguous_inputs():
    points, values, centers, value_centers = (t.transpose(0, 1).contiguous().transpose(0, 1)
                                              for t in _inputs(3, 20, 5, 6, seed=9))
    assert not points.is_contiguous()
    args = (points, values, centers, value_centers, *_scalars(0.8, 0.1))
    torch.testing.assert_close(cluster_encode(*args, impl='cpu'),
                               cluster_encode(*args, impl='reference'))


def test_bad_inputs_and_impls_raise_clear_errors():
    points, values, centers, value_centers = _inputs(2, 5, 3, 4, seed=0)
    with pytest.raises(ValueError, match='centers is on meta'):
        cluster_assign(points, centers.to('meta'), impl='cpu')
    with pytest.raises(ValueError, match='value_centers has dtype'):
        cluster_pool(points, values, centers, value_centers.double(), impl='cpu')
    with pytest.raises(ValueError, match='centers has shape'):
        cluster_pool(points, values, centers[:, :, :3], value_centers, impl='cpu')
    with pytest.raises(RuntimeError, match="impl='cpu' needs CPU tensors"):
        cluster_assign(points.to('meta'), centers.to('meta'), impl='cpu')
    if os.environ.get('TRITON_INTERPRET') != '1':
        with pytest.raises(RuntimeError, match="impl='triton' needs CUDA tensors"):
            cluster_assign(points, centers, impl='triton')


def test_missing_extension_falls_back_to_reference_and_logs_once():
    # A fresh interpreter where importing fec_mm._ext fails.
    code = (
        'import sys, torch\n'
        "sys.modules['fec_mm._ext'] = None\n"
        'from fec_mm.ops import cluster_encode\n'
        'from fec_mm.ops.cluster_ops import resolve_impl\n'
        "assert resolve_impl('cluster_encode', 'auto', 'cpu').__name__ == "
        "'cluster_encode_reference'\n"
        'p = torch.randn(2, 6, 3)\n'
        'for _ in range(3):\n'
        '    cluster_encode(p, p, p[:, :2], p[:, :2], torch.ones(1), torch.zeros(1))\n'
        'try:\n'
        "    cluster_encode(p, p, p[:, :2], p[:, :2], torch.ones(1), torch.zeros(1), impl='cpu')\n"
        'except RuntimeError as e:\n'
        "    print('ERROR', e)\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    log = result.stdout + result.stderr
    assert log.count('compiled CPU clustering kernels (fec_mm._ext) are not available') == 1
    assert "ERROR cluster_encode: impl='cpu' needs the compiled extension" in log


@pytest.mark.parametrize('op', ['cluster_assign', 'cluster_encode', 'cluster_encode_weighted',
                                'cluster_pool'])
@pytest.mark.parametrize('transposed', [False, True])
def test_custom_ops_pass_opcheck(op, transposed):
    """Schema, fake (meta) implementation (also its strides) and autograd of the cpu ops
    (cluster_encode_weighted: the encoding with Context Clusters' center update)."""
    points, values, centers, value_centers = _inputs(2, 10, 3, 4, seed=1)
    if transposed:  # as the backbone's pooled centers: (R, d, M) transposed
        points, values, centers, value_centers = (
            t.transpose(1, 2).contiguous().transpose(1, 2)
            for t in (points, values, centers, value_centers))
    alpha, beta = _scalars(1.0, 0.2)
    args = {'cluster_assign': (points, centers),
            'cluster_encode': (points, values, centers, value_centers, alpha, beta),
            'cluster_encode_weighted': (points, values, centers, value_centers, alpha, beta),
            'cluster_pool': (points, values, centers, value_centers)}[op]
    args = tuple(a.requires_grad_() for a in args)
    if op == 'cluster_encode_weighted':
        op, args = 'cluster_encode', args + (True,)
    torch.library.opcheck(getattr(torch.ops.fec_mm, f'{op}_cpu').default, args)


def test_compile_has_no_graph_break_at_the_ops():
    def step(points, values, centers, value_centers, alpha, beta):
        out = cluster_encode(points, values, centers, value_centers, alpha, beta, impl='cpu')
        pooled = cluster_pool(points, out, centers, value_centers, impl='cpu')
        return pooled.square().sum() + cluster_assign(points, centers, impl='cpu')[1].sum()

    args = [t.requires_grad_() for t in (*_inputs(2, 16, 4, 8, seed=6), *_scalars(1.0, 0.0))]
    torch._dynamo.reset()
    compiled = torch.compile(step, backend='aot_eager', fullgraph=True)
    loss = compiled(*args)
    grads = torch.autograd.grad(loss, args)
    expected_loss = step(*args)
    expected = torch.autograd.grad(expected_loss, args)
    torch.testing.assert_close(loss, expected_loss)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


def test_ops_need_torch_alone():
    """fec_mm.ops, running its reference and cpu ops, imports no OpenMMLab package."""
    code = (
        'import os, sys, types, torch\n'
        "pkg = types.ModuleType('fec_mm')\n"  # skip fec_mm/__init__ (it registers FEC)
        f"pkg.__path__ = [{os.path.dirname(cpu.__file__)!r} + '/..']\n"
        "sys.modules['fec_mm'] = pkg\n"
        'from fec_mm.ops import cluster_encode, cluster_pool\n'
        'p = torch.randn(2, 6, 3)\n'
        "for impl in ('reference', 'cpu'):\n"
        '    cluster_encode(p, p, p[:, :2], p[:, :2], torch.ones(1), torch.zeros(1), impl=impl)\n'
        '    cluster_pool(p, p, p[:, :2], p[:, :2], impl=impl)\n'
        "assert 'fec_mm._ext' in sys.modules\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('mmengine', 'mmcv', 'mmdet', 'mmseg', 'mmpretrain')))\n")
    result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == '[]'
