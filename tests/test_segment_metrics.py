"""Segment metrics: hand-computed values on small maps, brute-force loops on
random maps, and scikit-image's reference functions where they overlap."""
import numpy as np
import pytest
from skimage.metrics import contingency_table, variation_of_information
from skimage.segmentation import find_boundaries

from fec_mm.analysis.segment_metrics import (
    asa,
    bootstrap_ci,
    boundaries,
    boundary_precision,
    boundary_recall,
    contingency,
    mean_best_overlap,
    segment_scores,
    undersegmentation_error,
)

# 4x4 ground truth: left half 0, right half 1.
GT = np.array([[0, 0, 1, 1]] * 4)
# Prediction: top row one segment (straddles), the rest split at column 1|2
# but shifted by one on the bottom row.
PRED = np.array([[5, 5, 5, 5],
                 [7, 7, 9, 9],
                 [7, 7, 9, 9],
                 [7, 7, 7, 9]])


def test_hand_made_example():
    # Contingency (rows 5, 7, 9; cols 0, 1): [[2, 2], [6, 1], [0, 5]].
    table = contingency(PRED, GT)
    assert table.toarray().tolist() == [[2, 2], [6, 1], [0, 5]]
    # ASA: (2 + 6 + 5) / 16.
    assert asa(table) == pytest.approx(13 / 16)
    # UE (Neubert & Protzel): seg 5 min(2,2)+min(2,2)=4, seg 7 min(6,1)+min(1,6)=2,
    # seg 9 min(5,0)=0 -> 6 / 16.
    assert undersegmentation_error(table) == pytest.approx(6 / 16)
    # MBO: gt 0 (8 px): best IoU 6/(7+8-6)=6/9; gt 1 (8 px): 5/(5+8-5)=5/8.
    assert mean_best_overlap(table) == pytest.approx((6 / 9 + 5 / 8) / 2)


def test_hand_made_boundary_recall():
    # GT boundary pixels: columns 1 and 2 of every row (8 px). Predicted
    # boundary: rows 0-1 everywhere (top-row segment against the rest), the
    # column-1|2 split in rows 1-2, and (3,2),(3,3),(2,2) around the shift.
    pred_b = boundaries(PRED)
    assert pred_b.tolist() == [[True] * 4,
                               [True] * 4,
                               [False, True, True, False],
                               [False, False, True, True]]
    # At tolerance 0 every GT boundary pixel lies on a predicted one but (3,1).
    assert boundary_recall(PRED, GT, [0])[0] == pytest.approx(7 / 8)
    # (3,1) is 1 px from (3,2) and (2,1).
    assert boundary_recall(PRED, GT, [1, 2]) == (1.0, 1.0)
    # Precision: of the 12 predicted boundary pixels, 7 lie in columns 1-2;
    # the others (columns 0 and 3) are 1 px away.
    assert boundary_precision(PRED, GT, [0, 1]) == pytest.approx((7 / 12, 1.0))


def test_perfect_and_trivial_partitions():
    s = segment_scores(GT, GT)
    assert (s['asa'], s['ue'], s['br_2px'], s['br_diag'], s['bp_2px'], s['mbo']) == \
        (1, 0, 1, 1, 1, 1)
    one = np.zeros_like(GT)
    s = segment_scores(one, GT)
    assert s['asa'] == 0.5 and s['ue'] == 1.0 and s['br_2px'] == 0.0 and s['bp_2px'] == 1.0
    assert s['mbo'] == pytest.approx(0.5) and s['num_segments'] == 1


def test_ignore_label_drops_pixels():
    gt = GT.copy()
    gt[:, 0] = -1  # ignore the first column
    table = contingency(PRED, gt, ignore_label=-1)
    assert table.toarray().tolist() == [[1, 2], [3, 1], [0, 5]]
    assert asa(table) == pytest.approx(10 / 12)
    # Boundaries toward ignored pixels do not count: GT boundary = columns 1, 2.
    assert boundaries(gt, gt != -1)[:, 0].sum() == 0
    with pytest.raises(ValueError, match='no valid ground-truth pixel'):
        contingency(PRED, np.full_like(GT, -1), ignore_label=-1)


def _random_maps(seed, shape=(23, 31)):
    rng = np.random.default_rng(seed)
    # Blocky maps (upsampled), so segments are regions, not noise.
    gt = np.kron(rng.integers(0, 4, (5, 8)), np.ones((5, 4), int))[:shape[0], :shape[1]]
    pred = np.kron(rng.integers(10, 19, (8, 11)), np.ones((3, 3), int))[:shape[0], :shape[1]]
    return pred, gt


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_against_brute_force_and_skimage(seed):
    pred, gt = _random_maps(seed)
    table = contingency(pred, gt)
    ref = contingency_table(gt, pred).toarray()  # skimage: rows = im_true labels
    ref = ref[np.unique(gt)][:, np.unique(pred)].T
    assert np.array_equal(table.toarray(), ref)
    # Brute force over segments.
    N = gt.size
    seg_ids, gt_ids = np.unique(pred), np.unique(gt)
    a = sum(max((pred == s)[gt == g].sum() for g in gt_ids) for s in seg_ids) / N
    ue = sum(min(((pred == s) & (gt == g)).sum(), ((pred == s) & (gt != g)).sum())
             for g in gt_ids for s in seg_ids if ((pred == s) & (gt == g)).any()) / N
    mbo = np.mean([max(((pred == s) & (gt == g)).sum() / ((pred == s) | (gt == g)).sum()
                       for s in seg_ids) for g in gt_ids])
    assert asa(table) == pytest.approx(a)
    assert undersegmentation_error(table) == pytest.approx(ue)
    assert mean_best_overlap(table) == pytest.approx(mbo)
    # The conditional entropies (bits) of skimage's VI come from the same table.
    p = table.toarray() / N
    ps, pg = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    h_gt_given_s = -(p[nz] * np.log2((p / ps)[nz])).sum()
    h_s_given_gt = -(p[nz] * np.log2((p / pg)[nz])).sum()
    assert np.allclose(variation_of_information(gt, pred), [h_s_given_gt, h_gt_given_s])
    # Boundaries equal skimage's thick 4-connected boundaries.
    assert np.array_equal(boundaries(pred), find_boundaries(pred, connectivity=1, mode='thick'))
    # Boundary recall against a brute-force nearest-boundary search.
    gt_b, pred_b = np.argwhere(boundaries(gt)), np.argwhere(boundaries(pred))
    d = np.sqrt(((gt_b[:, None] - pred_b[None]) ** 2).sum(-1)).min(1)
    for tol in (0, 1, 1.5, 2, 3):
        assert boundary_recall(pred, gt, [tol])[0] == pytest.approx((d <= tol).mean())
    d = np.sqrt(((pred_b[:, None] - gt_b[None]) ** 2).sum(-1)).min(1)
    for tol in (0, 1, 2):
        assert boundary_precision(pred, gt, [tol])[0] == pytest.approx((d <= tol).mean())


def test_scores_reject_bad_maps():
    with pytest.raises(ValueError, match='one shape'):
        segment_scores(np.zeros((3, 4), int), np.zeros((4, 3), int))
    with pytest.raises(ValueError, match='integer labels'):
        segment_scores(np.zeros((3, 3)), np.zeros((3, 3), int))


def test_bootstrap_contains_mean_and_is_seeded():
    rng = np.random.default_rng(0)
    x = rng.random(30)
    mean, low, high = bootstrap_ci(x, 2000, seed=3)
    assert mean == pytest.approx(x.mean()) and low < mean < high
    assert bootstrap_ci(x, 2000, seed=3) == (mean, low, high)
    assert bootstrap_ci(x, 2000, seed=4) != (mean, low, high)
    # A 95 % interval of the mean is about ±1.96 standard errors wide.
    se = x.std(ddof=1) / np.sqrt(x.size)
    assert (high - low) / (2 * 1.96 * se) == pytest.approx(1, abs=0.15)
    assert bootstrap_ci([0.5] * 5) == (0.5, 0.5, 0.5)
    with pytest.raises(ValueError, match='non-empty'):
        bootstrap_ci([])
