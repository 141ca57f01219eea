"""The PyTorch reference ops against a brute-force reading of docs/notes/design.md §2 (and §7:
Context Clusters' similarity-weighted center update, ``aggregation='similarity'``)."""
import math

import pytest
import torch

from fec_mm.ops import cluster_assign, cluster_encode, cluster_pool


def _cos(a, b):
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    return sum(x * y for x, y in zip(a, b)) / (max(na, 1e-12) * max(nb, 1e-12))


def _first_argmax(scores):
    best = 0
    for i, s in enumerate(scores):
        if s > scores[best]:
            best = i
    return best


def brute_force(points, values, centers, value_centers, alpha=None, beta=None,
                aggregation='mean'):
    """Spec formulas with Python loops; alpha None means pooling (plain cosine);
    aggregation 'similarity' weighs each member by its similarity (docs/notes/design.md §7)."""
    R, N, _ = points.shape
    M = centers.shape[1]
    p, v, c, vc = (t.tolist() for t in (points, values, centers, value_centers))
    encoded, pooled, assign = [], [], []
    for r in range(R):
        if alpha is None:
            s = [[_cos(c[r][m], p[r][n]) for n in range(N)] for m in range(M)]
        else:
            s = [[1 / (1 + math.exp(-(beta + alpha * _cos(c[r][m], p[r][n]))))
                  for n in range(N)] for m in range(M)]
        a = [_first_argmax([s[m][n] for m in range(M)]) for n in range(N)]
        g = []
        for m in range(M):
            members = [n for n in range(N) if a[n] == m]
            w = {n: s[m][n] if aggregation == 'similarity' else 1.0 for n in members}
            g.append([(vc[r][m][k] + sum(w[n] * v[r][n][k] for n in members))
                      / (1 + sum(w.values())) for k in range(len(vc[r][m]))])
        encoded.append([[s[a[n]][n] * x for x in g[a[n]]] for n in range(N)])
        pooled.append(g)
        assign.append(a)
    return (torch.tensor(encoded, dtype=torch.float64), torch.tensor(pooled, dtype=torch.float64),
            torch.tensor(assign))


def _inputs(R, N, M, d, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(R, n, d, generator=gen, dtype=torch.float64) for n in (N, N, M, M)]


@pytest.mark.parametrize('R,N,M,d', [(2, 9, 4, 3), (1, 5, 1, 2), (3, 3, 6, 4), (2, 16, 4, 5)])
@pytest.mark.parametrize('alpha,beta', [(1.0, 0.0), (2.5, -0.7), (-1.3, 0.4)])
@pytest.mark.parametrize('aggregation', ['mean', 'similarity'])
def test_encode_matches_spec(R, N, M, d, alpha, beta, aggregation):
    points, values, centers, value_centers = _inputs(R, N, M, d, seed=R * 100 + N)
    expected, _, _ = brute_force(points, values, centers, value_centers, alpha, beta,
                                 aggregation)
    out = cluster_encode(points, values, centers, value_centers,
                         torch.tensor([alpha], dtype=torch.float64),
                         torch.tensor([beta], dtype=torch.float64), impl='reference',
                         aggregation=aggregation)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize('R,N,M,d', [(2, 16, 4, 3), (1, 3, 5, 2), (2, 7, 1, 4)])
def test_pool_and_assign_match_spec(R, N, M, d):
    points, values, centers, value_centers = _inputs(R, N, M, d, seed=7 + N)
    _, expected, expected_index = brute_force(points, values, centers, value_centers)
    out = cluster_pool(points, values, centers, value_centers, impl='reference')
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-12)
    index, cos = cluster_assign(points, centers, impl='reference')
    assert torch.equal(index, expected_index)
    for r in range(R):
        for n in range(N):
            assert cos[r, n].item() == pytest.approx(
                _cos(centers[r, index[r, n]].tolist(), points[r, n].tolist()), rel=1e-10)


def test_ties_go_to_lowest_center():
    points = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    centers = torch.tensor([[[0.0, 2.0], [3.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    index, _ = cluster_assign(points, centers, impl='reference')
    assert index.tolist() == [[1, 0]]
    # alpha = 0 makes every similarity sigmoid(beta): all points join center 0.
    out = cluster_encode(points, points, centers, centers, torch.zeros(1), torch.zeros(1),
                         impl='reference')
    g0 = (centers[0, 0] + points[0].sum(0)) / 3
    torch.testing.assert_close(out[0], 0.5 * g0.expand(2, 2))


@pytest.mark.parametrize('aggregation', ['mean', 'similarity'])
def test_encode_gradients_reach_every_input(aggregation):
    points, values, centers, value_centers = (t.requires_grad_() for t in _inputs(2, 12, 3, 4, 0))
    alpha = torch.ones(1, dtype=torch.float64, requires_grad=True)
    beta = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    args = (points, values, centers, value_centers, alpha, beta)
    assert torch.autograd.gradcheck(
        lambda *a: cluster_encode(*a, impl='reference', aggregation=aggregation), args)
    cluster_encode(*args, impl='reference', aggregation=aggregation).sum().backward()
    for t in args:
        assert t.grad is not None and t.grad.abs().sum() > 0


def test_pool_gradients_only_reach_values():
    points, values, centers, value_centers = (t.requires_grad_() for t in _inputs(2, 12, 3, 4, 1))
    cluster_pool(points, values, centers, value_centers, impl='reference').sum().backward()
    assert points.grad is None and centers.grad is None
    assert values.grad.abs().sum() > 0 and value_centers.grad.abs().sum() > 0


def test_bad_inputs_name_the_problem():
    points = torch.randn(2, 5, 3)
    centers = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match='values has shape'):
        cluster_pool(points, torch.randn(2, 6, 3), centers, centers)
    with pytest.raises(ValueError, match='dtype'):
        cluster_pool(points, points.double(), centers, centers)
    with pytest.raises(ValueError, match='3-D'):
        cluster_assign(points[0], centers)
    with pytest.raises(ValueError, match='unknown impl'):
        cluster_assign(points, centers, impl='cuda')
    with pytest.raises(ValueError, match='alpha must hold one value'):
        cluster_encode(points, points, centers, centers, torch.ones(2), torch.zeros(1))
    with pytest.raises(ValueError, match="unknown aggregation 'weighted'"):
        cluster_encode(points, points, centers, centers, torch.ones(1), torch.zeros(1),
                       aggregation='weighted')
