"""Scores of a partition of an image against ground-truth segments.

Everything is computed from one contingency table ``n[s, g]`` = number of
valid pixels in predicted segment ``s`` and ground-truth segment ``g``
(pixels carrying the ignore label in the ground truth are dropped from every
count, so ``|s|`` is the number of valid pixels of ``s``). With ``N`` valid
pixels:

- achievable segmentation accuracy, exact:
  ``ASA = Σ_s max_g n[s, g] / N`` (the accuracy of the best labelling that is
  constant on each predicted segment; no binning of overlaps);
- undersegmentation error, the corrected form of Neubert & Protzel
  ("Superpixel benchmark and comparison", 2012), which charges each
  straddling segment only its smaller side:
  ``UE = Σ_g Σ_{s: n[s,g]>0} min(n[s, g], |s| - n[s, g]) / N``;
- mean best overlap: ``MBO = mean_g max_s n[s,g] / (|s| + |g| - n[s,g])``;
- boundary recall at a tolerance ``d`` pixels: the fraction of ground-truth
  boundary pixels that have a predicted boundary pixel at Euclidean distance
  ``<= d``. A boundary pixel is one with a 4-neighbour of another label
  (skimage's ``find_boundaries(mode='thick', connectivity=1)``); in the
  ground truth, only pairs of valid pixels count;
- boundary precision at ``d``: the fraction of predicted boundary pixels
  (on valid pixels) with a ground-truth boundary pixel within ``d``. Recall
  alone rewards partitions whose segments are scattered pieces (more
  boundary everywhere); precision shows what that costs.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage, sparse

#: Fraction of the image diagonal used as the second boundary tolerance.
DIAGONAL_TOLERANCE = 0.0025
METRIC_NAMES: Tuple[str, ...] = ('asa', 'ue', 'br_2px', 'br_diag', 'bp_2px', 'mbo')


def _check_maps(pred: np.ndarray, gt: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred), np.asarray(gt)
    if pred.ndim != 2 or pred.shape != gt.shape:
        raise ValueError(f'segment metrics need two 2-D label maps of one shape, got '
                         f'{pred.shape} and {gt.shape}')
    for name, a in (('prediction', pred), ('ground truth', gt)):
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f'segment metrics: the {name} must hold integer labels, '
                             f'got dtype {a.dtype}')
    return pred, gt


def contingency(pred: np.ndarray, gt: np.ndarray,
                ignore_label: Optional[int] = None) -> sparse.csr_matrix:
    """Contingency table of two label maps.

    Args:
        pred (np.ndarray): (H, W) integer predicted segment ids (any values).
        gt (np.ndarray): (H, W) integer ground-truth segment ids.
        ignore_label (int, optional): Ground-truth label whose pixels are
            left out.

    Returns:
        scipy.sparse.csr_matrix: (S, G) counts; rows are the predicted ids
        present on valid pixels in ascending order, columns likewise for the
        ground truth.

    Raises:
        ValueError: Maps of other shapes or dtypes, or no valid pixel.
    """
    pred, gt = _check_maps(pred, gt)
    valid = np.ones(gt.shape, bool) if ignore_label is None else gt != ignore_label
    p, g = pred[valid], gt[valid]
    if p.size == 0:
        raise ValueError('segment metrics: no valid ground-truth pixel (all carry the '
                         f'ignore label {ignore_label})')
    _, p = np.unique(p, return_inverse=True)
    _, g = np.unique(g, return_inverse=True)
    shape = (int(p.max()) + 1, int(g.max()) + 1)
    return sparse.coo_matrix((np.ones(p.size, np.int64), (p.ravel(), g.ravel())),
                             shape=shape).tocsr()


def asa(table: sparse.spmatrix) -> float:
    """Achievable segmentation accuracy of a contingency table (exact)."""
    table = sparse.csr_matrix(table)
    return float(table.max(axis=1).sum() / table.sum())


def undersegmentation_error(table: sparse.spmatrix) -> float:
    """Neubert & Protzel's corrected undersegmentation error (see module doc)."""
    table = sparse.coo_matrix(table)
    sizes = np.asarray(table.sum(axis=1)).ravel()
    n = table.data
    return float(np.minimum(n, sizes[table.row] - n).sum() / n.sum())


def mean_best_overlap(table: sparse.spmatrix) -> float:
    """Mean over ground-truth segments of the best IoU with a predicted one."""
    table = sparse.coo_matrix(table)
    s_size = np.asarray(table.sum(axis=1)).ravel()
    g_size = np.asarray(table.sum(axis=0)).ravel()
    n = table.data.astype(np.float64)
    iou = n / (s_size[table.row] + g_size[table.col] - n)
    best = np.zeros(table.shape[1])
    np.maximum.at(best, table.col, iou)
    return float(best.mean())


def boundaries(labels: np.ndarray, valid: Optional[np.ndarray] = None) -> np.ndarray:
    """Pixels with a 4-neighbour of another label, (H, W) bool.

    With ``valid``, only pairs of valid pixels count (a pixel next to an
    ignored one is not a boundary for that pair). Without, this equals
    ``skimage.segmentation.find_boundaries(labels, connectivity=1,
    mode='thick')``.
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        a = [slice(None)] * 2
        b = [slice(None)] * 2
        a[axis], b[axis] = slice(None, -1), slice(1, None)
        diff = labels[tuple(a)] != labels[tuple(b)]
        if valid is not None:
            diff &= valid[tuple(a)] & valid[tuple(b)]
        out[tuple(a)] |= diff
        out[tuple(b)] |= diff
    return out


def boundary_recall(pred: np.ndarray, gt: np.ndarray, tolerances: Sequence[float],
                    ignore_label: Optional[int] = None) -> Tuple[float, ...]:
    """Boundary recall at each tolerance (pixels, Euclidean distance <= tol).

    An image without any ground-truth boundary has recall 1 (nothing to miss).
    """
    pred, gt = _check_maps(pred, gt)
    valid = None if ignore_label is None else gt != ignore_label
    gt_b = boundaries(gt, valid)
    if not gt_b.any():
        return tuple(1.0 for _ in tolerances)
    pred_b = boundaries(pred)
    if not pred_b.any():
        return tuple(0.0 for _ in tolerances)
    dist = ndimage.distance_transform_edt(~pred_b)[gt_b]
    return tuple(float((dist <= t).mean()) for t in tolerances)


def boundary_precision(pred: np.ndarray, gt: np.ndarray, tolerances: Sequence[float],
                       ignore_label: Optional[int] = None) -> Tuple[float, ...]:
    """Boundary precision at each tolerance (pixels, Euclidean distance <= tol).

    A prediction without boundary pixels has precision 1 (nothing false).
    """
    pred, gt = _check_maps(pred, gt)
    valid = None if ignore_label is None else gt != ignore_label
    pred_b = boundaries(pred)
    if valid is not None:
        pred_b &= valid
    if not pred_b.any():
        return tuple(1.0 for _ in tolerances)
    gt_b = boundaries(gt, valid)
    if not gt_b.any():
        return tuple(0.0 for _ in tolerances)
    dist = ndimage.distance_transform_edt(~gt_b)[pred_b]
    return tuple(float((dist <= t).mean()) for t in tolerances)


def segment_scores(pred: np.ndarray, gt: np.ndarray,
                   ignore_label: Optional[int] = None) -> Dict[str, float]:
    """All scores of :data:`METRIC_NAMES` for one image.

    Args:
        pred (np.ndarray): (H, W) integer predicted segment ids.
        gt (np.ndarray): (H, W) integer ground-truth segment ids.
        ignore_label (int, optional): Ground-truth label left out.

    Returns:
        dict: ``asa``, ``ue``, ``br_2px`` (tolerance 2 px), ``br_diag``
        (tolerance 0.25 % of the image diagonal), ``bp_2px`` (boundary
        precision at 2 px) and ``mbo``, plus
        ``num_segments`` (predicted labels on the whole map) and
        ``num_regions`` (their 4-connected pieces: a label may cover several,
        and more pieces mean more boundary pixels, which boundary recall
        rewards).
    """
    from skimage.measure import label
    table = contingency(pred, gt, ignore_label)
    diag = DIAGONAL_TOLERANCE * float(np.hypot(*gt.shape))
    br2, brd = boundary_recall(pred, gt, (2.0, diag), ignore_label)
    bp2, = boundary_precision(pred, gt, (2.0,), ignore_label)
    return dict(asa=asa(table), ue=undersegmentation_error(table), br_2px=br2, br_diag=brd,
                bp_2px=bp2, mbo=mean_best_overlap(table), num_segments=float(np.unique(pred).size),
                num_regions=float(label(pred, background=int(pred.min()) - 1,
                                        connectivity=1).max()))


def bootstrap_ci(values: Sequence[float], num_samples: int = 1000, seed: int = 0,
                 level: float = 0.95) -> Tuple[float, float, float]:
    """Mean and percentile bootstrap interval of the mean over images.

    Returns:
        tuple: (mean, low, high); resampling is seeded, so repeatable.
    """
    x = np.asarray(values, np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f'bootstrap_ci needs a non-empty 1-D sequence, got shape {x.shape}')
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(num_samples, x.size))].mean(axis=1)
    alpha = (1 - level) / 2
    low, high = np.quantile(means, [alpha, 1 - alpha])
    return float(x.mean()), float(low), float(high)
