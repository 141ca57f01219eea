"""The export formulation of the clustering ops (fec_mm/ops/export.py) against
the reference: exact indices (ties included), values within 1e-6 (float64) /
1e-5 (float32); the bin-averaging center pooling against adaptive pooling on
non-divisible grids. Torch only: no ONNX needed."""
import pytest
import torch
import torch.nn.functional as F

from fec_mm.ops import cluster_encode, cluster_pool, export, reference

TOL = {torch.float64: 1e-6, torch.float32: 1e-5}


def tied_inputs(R: int, N: int, M: int, d: int, dtype: torch.dtype, seed: int):
    """Random points and centers with exact ties built in.

    - centers 1 and 2 duplicate center 0 and lie on a coordinate axis, and
      some points are sums of coordinate axes: their cosines with the
      duplicates are bitwise equal whatever the summation order (one
      non-zero product), so the first of the duplicates must win;
    - some points are zero: cosine 0 with every center, a tie of all M.
    """
    g = torch.Generator().manual_seed(seed)
    points = torch.randn(R, N, d, generator=g, dtype=dtype)
    centers = torch.randn(R, M, d, generator=g, dtype=dtype)
    axis = torch.zeros(d, dtype=dtype)
    axis[0] = 1.0
    centers[:, :3] = axis
    lattice = torch.zeros(d, dtype=dtype)
    lattice[:2] = 1.0
    points[:, ::5] = lattice
    points[:, 1::7] = 0.0
    values = torch.randn(R, N, d, generator=g, dtype=dtype)
    value_centers = torch.randn(R, M, d, generator=g, dtype=dtype)
    return points, values, centers, value_centers


SHAPES = [(3, 50, 7, 8), (2, 64, 49, 24), (4, 33, 4, 5)]


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('R,N,M,d', SHAPES)
def test_assign_export_matches_reference(R, N, M, d, dtype):
    points, _, centers, _ = tied_inputs(R, N, M, d, dtype, seed=N)
    index, cos = export.cluster_assign_export(points, centers)
    ref_index, ref_cos = reference.cluster_assign_reference(points, centers)
    assert torch.equal(index, ref_index)
    # The ties were really there and went to the lowest index.
    assert (index[:, ::5] != 1).all() and (index[:, ::5] != 2).all()
    assert (index[:, 1::7] == 0).all()
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('R,N,M,d', SHAPES)
@pytest.mark.parametrize('alpha', [1.3, -0.7, 0.0])
@pytest.mark.parametrize('aggregation', ['mean', 'similarity'])
def test_encode_export_matches_reference(R, N, M, d, dtype, alpha, aggregation):
    points, values, centers, value_centers = tied_inputs(R, N, M, d, dtype, seed=M)
    a = torch.tensor([alpha], dtype=dtype)
    b = torch.tensor([0.2], dtype=dtype)
    out, index, cos = export.cluster_encode_export(points, values, centers, value_centers,
                                                   a, b, return_assignment=True,
                                                   aggregation=aggregation)
    ref, ref_index, ref_cos = reference.cluster_encode_reference(
        points, values, centers, value_centers, a, b, return_assignment=True,
        aggregation=aggregation)
    assert torch.equal(index, ref_index)
    if alpha == 0.0:  # every score equal: all points join center 0
        assert (index == 0).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL[dtype])
    torch.testing.assert_close(cos, ref_cos, rtol=0, atol=TOL[dtype])
    plain = export.cluster_encode_export(points, values, centers, value_centers, a, b,
                                         aggregation=aggregation)
    assert torch.equal(plain, out)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('R,N,M,d', SHAPES)
def test_pool_export_matches_reference(R, N, M, d, dtype):
    points, values, centers, value_centers = tied_inputs(R, N, M, d, dtype, seed=d)
    out, index, cos = export.cluster_pool_export(points, values, centers, value_centers,
                                                 return_assignment=True)
    ref, ref_index = reference.cluster_pool_reference(points, values, centers, value_centers,
                                                      return_assignment=True)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL[dtype])
    torch.testing.assert_close(cos, reference.chosen_cosine(points, centers, index),
                               rtol=0, atol=TOL[dtype])


def test_aggregation_counts_by_hand():
    """One region, 2 centers, 3 points (two join center 1): hand-computed."""
    points = torch.tensor([[[1., 0.], [0., 1.], [0., 2.]]])
    centers = torch.tensor([[[1., 0.], [0., 1.]]])
    values = torch.tensor([[[1., 1.], [2., 4.], [4., 8.]]])
    value_centers = torch.tensor([[[3., 3.], [0., 0.]]])
    out = export.cluster_pool_export(points, values, centers, value_centers)
    expected = torch.tensor([[[(3 + 1) / 2, (3 + 1) / 2], [(2 + 4) / 3, (4 + 8) / 3]]])
    torch.testing.assert_close(out, expected)


def adaptive_bins(L: int, S: int):
    """Bins of adaptive pooling, written out: [floor(i·L/S), ceil((i+1)·L/S))."""
    return [(i * L // S, -(-(i + 1) * L // S)) for i in range(S)]


@pytest.mark.parametrize('L,S', [(25, 7), (42, 7), (32, 10), (13, 5), (5, 7), (8, 4), (1, 3)])
def test_bin_average_matrix_by_hand(L, S):
    P = export.bin_average_matrix(L, S, torch.float64)
    expected = torch.zeros(S, L, dtype=torch.float64)
    for i, (start, end) in enumerate(adaptive_bins(L, S)):
        expected[i, start:end] = 1.0 / (end - start)
    assert torch.equal(P, expected)


@pytest.mark.parametrize('dtype', [torch.float64, torch.float32])
@pytest.mark.parametrize('H,W,size', [(25, 42, (7, 7)), (32, 32, (10, 10)), (13, 7, (5, 5)),
                                      (5, 4, (7, 7)), (14, 14, (4, 4)), (20, 30, (2, 3))])
def test_center_pool_export_matches_adaptive_pooling(H, W, size, dtype):
    x = torch.randn(3, 6, H, W, dtype=dtype, generator=torch.Generator().manual_seed(H * W))
    got = export.center_pool_export(x, size)
    torch.testing.assert_close(got, F.adaptive_avg_pool2d(x, size), rtol=0, atol=TOL[dtype])
    # Outside an export, center_pool is adaptive pooling itself.
    assert torch.equal(export.center_pool(x, size), F.adaptive_avg_pool2d(x, size))


def test_public_ops_switch_to_export_formulation(monkeypatch):
    """While exporting, every impl (also 'cpu', a custom op no exporter knows)
    runs the export formulation; return_assignment keeps working."""
    points, values, centers, value_centers = tied_inputs(2, 40, 6, 8, torch.float32, seed=3)
    a, b = torch.tensor([1.5]), torch.tensor([0.1])
    calls = []
    real = export.cluster_encode_export

    def spy(*args, **kwargs):
        calls.append('encode')
        return real(*args, **kwargs)

    monkeypatch.setattr(export, 'is_exporting', lambda: True)
    monkeypatch.setattr(export, 'cluster_encode_export', spy)
    for impl in ('auto', 'reference', 'cpu'):
        out, index, cos = cluster_encode(points, values, centers, value_centers, a, b,
                                         impl=impl, return_assignment=True)
        ref, ref_index, _ = reference.cluster_encode_reference(
            points, values, centers, value_centers, a, b, return_assignment=True)
        assert torch.equal(index, ref_index)
        torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
        pooled, pindex, _ = cluster_pool(points, values, centers, value_centers, impl=impl,
                                         return_assignment=True)
        assert torch.equal(pindex, reference.cluster_assign_reference(points, centers)[0])
    assert calls == ['encode'] * 3


def test_not_exporting_by_default():
    assert not export.is_exporting()
