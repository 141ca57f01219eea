"""The near-tie classifier of ``--verify`` (fec_mm.deployment.parity) on
constructed inputs: exact and float32-rounding ties pass, a clear difference
fails naming the layer, the point and both cosines, and a change after a
near tie passes only where each runtime chose well on its own inputs.

Needs neither onnx nor onnxruntime: the ONNX Runtime outputs are arrays made
here. The end-to-end case (a real near tie in an export) is in
tests/test_onnx_export.py.
"""
import numpy as np
import pytest
import torch

from fec_mm.deployment.parity import (
    NOT_A_TIE,
    TIE,
    classify_differences,
    compare,
    global_to_regional,
    tie_bound,
)
from fec_mm.models.assignments import regional_to_global


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _near_tie_centers(d=16, gap=1e-7, seed=0):
    """One point and two centers whose float64 cosines with it differ by
    about ``gap``, in float32."""
    rng = np.random.default_rng(seed)
    p = _unit(rng.standard_normal(d))
    c0 = _unit(rng.standard_normal(d))
    # Move c1 along the component of p orthogonal to c0, so that only the
    # cosine with p changes (by about gap).
    ortho = _unit(p - (p @ c0) * c0)
    c1 = _unit(c0 + gap / (p @ ortho) * ortho)
    points = p.astype(np.float32)[None, None]          # (R=1, N=1, d)
    centers = np.stack([c0, c1]).astype(np.float32)[None]  # (R=1, M=2, d)
    return points, centers


def test_exact_tie_is_a_tie():
    points = np.array([[[1, 0, 0, 0]]], dtype=np.float32)
    centers = np.array([[[1, 1, 0, 0], [1, -1, 0, 0], [0, 0, 1, 0]]], dtype=np.float32)
    diffs = classify_differences(points, centers, np.array([[0]]), np.array([[1]]))
    assert diffs.kind.tolist() == [TIE]
    assert diffs.cos_torch[0] == diffs.cos_ort[0] == pytest.approx(2 ** -0.5)


def test_float32_near_tie_is_a_tie_and_a_clear_difference_is_not():
    points, centers = _near_tie_centers(gap=1e-7)
    diffs = classify_differences(points, centers, np.array([[1]]), np.array([[0]]))
    gap = abs(diffs.cos_torch[0] - diffs.cos_ort[0])
    assert 0 < gap < diffs.bound[0] < 1e-4
    assert diffs.kind.tolist() == [TIE]
    # The same construction 1e-3 apart: far beyond float32 rounding.
    points, centers = _near_tie_centers(gap=1e-3)
    diffs = classify_differences(points, centers, np.array([[1]]), np.array([[0]]))
    assert abs(diffs.cos_torch[0] - diffs.cos_ort[0]) > 10 * diffs.bound[0]
    assert diffs.kind.tolist() == [NOT_A_TIE]


def test_tie_bound_grows_with_sqrt_d():
    assert tie_bound(64, 1.0) == pytest.approx(2 * tie_bound(16, 1.0))
    assert tie_bound(64, 1.0) == pytest.approx(16 * 8 * 2.0 ** -24)


def test_global_to_regional_inverts_regional_to_global():
    B, heads, d, fold, h, w, mh, mw = 2, 3, 4, 2, 5, 6, 2, 3
    R = B * heads * fold * fold
    local = torch.randint(0, mh * mw, (R, h * w), generator=torch.Generator().manual_seed(0))
    layout = (B, heads, d, fold, h, w)
    glob = regional_to_global(local, layout, (mh, mw)).numpy()
    assert (global_to_regional(glob, layout, (mh, mw)) == local.numpy()).all()
    # A center of another region is flagged -1.
    glob[0, 0, 0, 0] = (mh) * (fold * mw)  # first center of region (1, 0)
    assert global_to_regional(glob, layout, (mh, mw))[0, 0] == -1


def _layer(points, centers, index, ort_index, layout, centers_hw, ort_points=None,
           ort_centers=None):
    """Torch-side and ORT-side outputs of one layer (index, points, centers)."""
    t = (torch.from_numpy(index), torch.from_numpy(points), torch.from_numpy(centers))
    o = (ort_index, points if ort_points is None else ort_points,
         centers if ort_centers is None else ort_centers)
    return t, o


def _one_layer_case(gap, batch=1):
    """A 1-head, unfolded layer of 1x2 tokens and 2 centers per image; token
    (0, 1) of image 0 is near-tied with gap ``gap``; ORT picks the other."""
    p, c = _near_tie_centers(d=16, gap=gap)
    points = np.stack([np.stack([c[0, 0], p[0, 0]])] * batch)  # token 0 = center 0
    centers = np.concatenate([c] * batch)
    layout, centers_hw = (batch, 1, 16, 1, 1, 2), (1, 2)
    index = np.zeros((batch, 1, 1, 2), dtype=np.int64)
    index[:, 0, 0, 1] = 1  # PyTorch: the second center for token 1
    ort_index = index.copy()
    ort_index[0, 0, 0, 1] = 0
    return points, centers, index, ort_index, layout, centers_hw


def test_compare_passes_near_ties_and_reports_them():
    points, centers, index, ort_index, layout, hw = _one_layer_case(gap=1e-7)
    feats = torch.ones(1, 2, 3, 3)
    ort_feats = feats.numpy() + 1.0  # downstream of the tie: every element differs
    t, o = _layer(points, centers, index, ort_index, layout, hw)
    report = compare([ort_feats, *o], [feats, *t], 1, ['backbone.pool0'], (1, 3, 4, 4),
                     layouts=[(layout, hw)])
    assert report.classified and report.within_atol == 0
    assert report.near_ties == 1 and report.errors == 0 and report.tied_images == [0]
    assert report.passed, report.summary()
    assert 'float32 near ties: 1 (backbone.pool0 1)' in report.summary()
    # The same outputs without the layers' inputs: today's rule, refused.
    report = compare([ort_feats, o[0]], [feats, t[0]], 1, ['backbone.pool0'], (1, 3, 4, 4))
    assert not report.classified and not report.passed


def test_compare_refuses_a_clear_difference_naming_point_and_cosines():
    points, centers, index, ort_index, layout, hw = _one_layer_case(gap=1e-2)
    feats = torch.ones(1, 2)
    t, o = _layer(points, centers, index, ort_index, layout, hw)
    report = compare([feats.numpy(), *o], [feats, *t], 1, ['backbone.pool0'], (1, 3, 4, 4),
                     layouts=[(layout, hw)])
    assert report.within_atol == 1 and report.errors == 1 and not report.passed
    summary = report.summary()
    assert 'NOT A NEAR TIE: backbone.pool0, image 0 head 0 token (y=0, x=1)' in summary
    assert report.layers[0].num_errors == 1
    expected = classify_differences(points, centers, np.array([[0, 1]]),
                                    np.array([[0, 0]]))
    assert f'{expected.cos_torch[0]:.10f}' in summary and f'{expected.cos_ort[0]:.10f}' in summary


def test_a_change_after_a_near_tie_must_be_each_runtimes_best():
    """Layer 1 differs at a point whose cosines are 1e-2 apart: accepted in
    the image whose layer 0 had a near tie when ORT's own inputs favour ORT's
    choice, refused when they do not, and refused in an image without a tie."""
    batch = 2
    points, centers, index, ort_index, layout, hw = _one_layer_case(gap=1e-7, batch=batch)
    p2, c2 = _near_tie_centers(d=16, gap=1e-2, seed=1)  # PyTorch: center 1 clearly
    points2 = np.concatenate([np.stack([c2[0, 0], p2[0, 0]])[None]] * batch)
    centers2 = np.concatenate([c2] * batch)
    index2 = np.zeros((batch, 1, 1, 2), dtype=np.int64)
    index2[:, 0, 0, 1] = 1
    ort_index2 = index2.copy()
    ort_index2[:, 0, 0, 1] = 0  # ORT picks center 0 in both images
    ort_centers2 = centers2.copy()
    ort_centers2[0, 0] = points2[0, 1]  # in image 0, ORT's center 0 is the point itself
    feats = torch.ones(batch, 2)
    t1, o1 = _layer(points, centers, index, ort_index, layout, hw)
    t2, o2 = _layer(points2, centers2, index2, ort_index2, layout, hw,
                    ort_centers=ort_centers2)
    names = ['pool0', 'stages.0.0.mixer']
    torch_out = [feats, t1[0], t2[0], t1[1], t1[2], t2[1], t2[2]]
    ort_out = [feats.numpy(), o1[0], o2[0], o1[1], o1[2], o2[1], o2[2]]
    report = compare(ort_out, torch_out, 1, names, (batch, 3, 4, 4),
                     layouts=[(layout, hw)] * 2)
    layer = report.layers[1]
    assert (layer.near_ties, layer.follow_ties, layer.num_errors) == (0, 1, 1)
    assert 'image 1 head 0 token (y=0, x=1)' in layer.errors[0]
    assert not report.passed
    # Without the favourable ORT inputs in image 0 both are errors.
    ort_out[-1] = centers2
    report = compare(ort_out, torch_out, 1, names, (batch, 3, 4, 4),
                     layouts=[(layout, hw)] * 2)
    assert (report.layers[1].follow_ties, report.layers[1].num_errors) == (0, 2)
