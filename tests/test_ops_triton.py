"""The Triton kernels (``impl='triton'``) against the reference.

Without a GPU the kernels run on CPU tensors under Triton's interpreter, which
must be switched on (``TRITON_INTERPRET=1``) before Triton is imported. So that
no other test module is affected, this module re-runs itself in a fresh
interpreter with that variable set (``test_under_the_interpreter``); its other
tests only run there, or in a process that has CUDA. The interpreter computes
bfloat16 wrongly, so bfloat16 is tested on a GPU only.
"""
import functools
import importlib.util
import os

import pytest
import torch
from triton_interpreter import rerun_under_interpreter

INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'
HAS_TRITON = importlib.util.find_spec('triton') is not None
DEVICE = 'cuda' if torch.cuda.is_available() else 'cpu'
RUN_KERNELS = HAS_TRITON and (INTERPRET or DEVICE == 'cuda')
kernels = pytest.mark.skipif(not RUN_KERNELS, reason='needs a GPU or TRITON_INTERPRET=1 '
                             '(run by test_under_the_interpreter)')


@pytest.mark.skipif(not HAS_TRITON or INTERPRET, reason='already in the interpreter')
def test_under_the_interpreter():
    summary = rerun_under_interpreter(__file__, 'not test_under_the_interpreter')
    assert ' passed' in summary and 'skipped' not in summary, summary


def _ops():
    from fec_mm.ops import cluster_assign, cluster_encode, cluster_pool
    return cluster_assign, cluster_encode, cluster_pool


def _inputs(R, N, M, d, seed, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(R, n, d, generator=gen).to(DEVICE, dtype) for n in (N, N, M, M)]


def _scalars(alpha, beta):
    return (torch.tensor([alpha], device=DEVICE), torch.tensor([beta], device=DEVICE))


# Small shapes (the interpreter is slow): odd sizes, M = 1, N < M, N and M
# over the 64-wide blocks, d over the 64-channel chunk.
SHAPES = [(1, 1, 1, 1), (2, 9, 4, 3), (3, 3, 6, 4), (2, 7, 1, 5), (2, 70, 9, 24),
          (1, 20, 70, 5), (1, 30, 8, 70)]


@kernels
@pytest.mark.parametrize('R,N,M,d', SHAPES)
def test_forward_matches_reference(R, N, M, d):
    cluster_assign, cluster_encode, cluster_pool = _ops()
    points, values, centers, value_centers = _inputs(R, N, M, d, seed=R + N + M + d)
    index, cos = cluster_assign(points, centers, impl='triton')
    ref_index, ref_cos = cluster_assign(points, centers, impl='reference')
    assert index.dtype == torch.int64 and torch.equal(index, ref_index)
    torch.testing.assert_close(cos, ref_cos, rtol=1e-5, atol=1e-6)
    args = (points, values, centers, value_centers)
    torch.testing.assert_close(cluster_pool(*args, impl='triton'),
                               cluster_pool(*args, impl='reference'), rtol=1e-5, atol=1e-6)
    for alpha, beta in ((1.0, 0.0), (-1.3, 0.4), (0.0, 0.3)):
        enc = (*args, *_scalars(alpha, beta))
        for aggregation in ('mean', 'similarity'):
            torch.testing.assert_close(
                cluster_encode(*enc, impl='triton', aggregation=aggregation),
                cluster_encode(*enc, impl='reference', aggregation=aggregation),
                rtol=1e-5, atol=1e-6)


def _grads(fn, args, dtype=None):
    args = [a.detach().clone().requires_grad_() for a in args]
    out = fn(*args)
    out = out[1] if isinstance(out, tuple) else out
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    (out.float() * weight.to(out.device)).sum().backward()
    return [None if a.grad is None else a.grad.double() for a in args]


@kernels
@pytest.mark.parametrize('R,N,M,d', [(2, 9, 4, 3), (2, 70, 9, 24), (1, 20, 70, 5),
                                     (1, 30, 8, 70)])
def test_gradients_match_reference(R, N, M, d):
    """fp32 kernels against the float64 reference on the same inputs."""
    cluster_assign, cluster_encode, cluster_pool = _ops()
    tensors = _inputs(R, N, M, d, seed=11 + N)
    enc = [*tensors, *_scalars(1.7, -0.3)]
    similarity = functools.partial(cluster_encode, aggregation='similarity')
    for op, args in ((cluster_encode, enc), (similarity, enc), (cluster_pool, tensors),
                     (cluster_assign, [tensors[0], tensors[2]])):
        got = _grads(lambda *a: op(*a, impl='triton'), args)
        expected = _grads(lambda *a: op(*a, impl='reference'), [a.double() for a in args])
        for g, e in zip(got, expected):
            if e is None:
                assert g is None
            else:
                torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


@kernels
def test_ties_go_to_lowest_center_across_blocks():
    cluster_assign, cluster_encode, _ = _ops()
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(1, 70, 8, generator=gen)
    centers[0, 66] = 2 * centers[0, 3]      # same direction, next block of 64
    centers[0, 5] = centers[0, 3]           # the same center, same block
    points = centers[:, [3, 5, 66]] + 1e-3 * torch.randn(1, 3, 8, generator=gen)
    points, centers = points.to(DEVICE), centers.to(DEVICE)
    assert cluster_assign(points, centers, impl='triton')[0].tolist() == [[3, 3, 3]]


@kernels
def test_results_are_deterministic():
    _, cluster_encode, cluster_pool = _ops()
    args = [*_inputs(2, 90, 12, 24, seed=2), *_scalars(1.1, 0.2)]
    for aggregation in ('mean', 'similarity'):
        runs = [_grads(lambda *a: cluster_encode(*a, impl='triton', aggregation=aggregation),
                       args) for _ in range(2)]
        assert all(torch.equal(a, b) for a, b in zip(*runs))
    assert torch.equal(cluster_pool(*args[:4], impl='triton'),
                       cluster_pool(*args[:4], impl='triton'))


@kernels
@pytest.mark.parametrize('dtype', [torch.float16] + ([torch.bfloat16] if DEVICE == 'cuda'
                                                      else []))
def test_half_inputs_accumulate_in_float32(dtype):
    cluster_assign, cluster_encode, _ = _ops()
    tensors = _inputs(2, 50, 9, 24, seed=4, dtype=dtype)
    index, cos = cluster_assign(tensors[0], tensors[2], impl='triton')
    # fp16 rounding may flip near-ties; the chosen center must be a maximum
    # of the fp32 cosine up to that rounding.
    from fec_mm.ops.reference import cosine_similarity_matrix
    full = cosine_similarity_matrix(tensors[2].float(), tensors[0].float())
    chosen = full.gather(1, index[:, None]).squeeze(1)
    assert (full.max(1).values - chosen).max() < 2e-3
    alpha, beta = _scalars(1.0, 0.0)
    out = cluster_encode(*tensors, alpha, beta, impl='triton')
    assert out.dtype == dtype
    expected = cluster_encode(*(t.float() for t in tensors), alpha, beta, impl='reference')
    same = (index == cluster_assign(tensors[0].float(), tensors[2].float(),
                                    impl='reference')[0])
    torch.testing.assert_close(out.float()[same], expected[same], rtol=1e-2, atol=1e-2)
    grads = _grads(lambda *a: cluster_encode(*a, impl='triton'), [*tensors, alpha, beta])
    assert all(torch.isfinite(g).all() for g in grads)


@kernels
def test_float64_is_refused_and_auto_falls_back():
    cluster_assign, _, _ = _ops()
    points, _, centers, _ = _inputs(1, 5, 2, 3, seed=0, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="impl='triton' supports"):
        cluster_assign(points, centers, impl='triton')
    from fec_mm.ops.cluster_ops import resolve_impl
    if DEVICE == 'cuda':
        assert resolve_impl('cluster_assign', 'auto', 'cuda', torch.float64).__name__ == \
            'cluster_assign_reference'
        assert resolve_impl('cluster_assign', 'auto', 'cuda', torch.float16).__name__ == \
            'cluster_assign_triton'


@kernels
@pytest.mark.parametrize('op', ['cluster_assign', 'cluster_encode', 'cluster_encode_weighted',
                                'cluster_pool'])
@pytest.mark.parametrize('transposed', [False, True])
def test_custom_ops_pass_opcheck(op, transposed):
    points, values, centers, value_centers = _inputs(1, 6, 3, 4, seed=1)
    if transposed:  # the fake outputs must have the kernels' (contiguous) strides
        points, values, centers, value_centers = (
            t.transpose(1, 2).contiguous().transpose(1, 2)
            for t in (points, values, centers, value_centers))
    alpha, beta = _scalars(1.0, 0.2)
    args = {'cluster_assign': (points, centers),
            'cluster_encode': (points, values, centers, value_centers, alpha, beta),
            'cluster_encode_weighted': (points, values, centers, value_centers, alpha, beta),
            'cluster_pool': (points, values, centers, value_centers)}[op]
    _ops()  # registers the custom ops
    args = tuple(a.requires_grad_() for a in args)
    if op == 'cluster_encode_weighted':  # Context Clusters' center update
        op, args = 'cluster_encode', args + (True,)
    torch.library.opcheck(getattr(torch.ops.fec_mm, f'{op}_triton').default, args)


@kernels
def test_backbone_matches_reference():
    """A whole (small) FEC runs on the Triton ops: outputs and gradients, at
    an odd size (padded inside to 32 x 64, outputs cropped)."""
    from fec_mm.models import FEC
    tiny = dict(arch=dict(depths=(1, 1, 1, 1), widths=(16, 24, 32, 40), heads=(2, 2, 4, 4),
                          head_dim=8), num_centers=(3, 3, 2, 2), folds=(2, 2, 1, 1))
    x = torch.randn(1, 3, 29, 61, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    results = []
    for impl in ('triton', 'reference'):
        torch.manual_seed(0)
        model = FEC(**tiny, ops_impl=impl).to(DEVICE)
        outs = model(x)
        sum(o.sum() for o in outs).backward()
        results.append((outs, {n: p.grad for n, p in model.named_parameters()
                               if p.grad is not None}))
    (outs, grads), (ref_outs, ref_grads) = results
    for o, r in zip(outs, ref_outs):
        torch.testing.assert_close(o, r, rtol=1e-4, atol=1e-5)
    assert grads.keys() == ref_grads.keys()
    for name in grads:
        torch.testing.assert_close(grads[name], ref_grads[name], rtol=1e-3, atol=1e-5, msg=name)


@kernels
@pytest.mark.parametrize('alpha', [0.7, -1.3])
def test_return_assignment_matches_reference(alpha):
    """The assignment the Triton kernels aggregated with (what the recorder
    of fec_mm.models.record_assignments stores) equals the reference's."""
    _, encode, pool = _ops()
    p, v, c, vc = _inputs(2, 70, 9, 24, seed=5)
    a, b = _scalars(alpha, 0.2)
    similarity = functools.partial(encode, aggregation='similarity')
    for op, args in ((encode, (p, v, c, vc, a, b)), (similarity, (p, v, c, vc, a, b)),
                     (pool, (p, v, c, vc))):
        ref = op(*args, impl='reference', return_assignment=True)
        got = op(*args, impl='triton', return_assignment=True)
        assert torch.equal(got[1].cpu(), ref[1].cpu())
        for x, y in ((got[0], ref[0]), (got[2], ref[2])):
            torch.testing.assert_close(x.cpu(), y.cpu(), rtol=1e-5, atol=1e-5)
