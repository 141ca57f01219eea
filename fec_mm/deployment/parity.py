"""ONNX Runtime vs PyTorch: elementwise error of the outputs and agreement of
the cluster assignments, with float32 near-ties told apart from errors.

A flipped near-tie moves a token to another cluster and changes a whole
region's output, so the maximum error alone says little: the report gives the
share of elements within a tolerance and the share of recorded assignment
indices (``fec_mm.models.record_assignments``) that are equal. Where the
layers' inputs were exported too (``WithAssignments(with_inputs=True)``, what
``--verify`` does), every differing index is rescored in float64
(:func:`classify_differences`):

- a **near tie**: PyTorch's and ONNX Runtime's centers have cosines with the
  point within float32 rounding of each other (:func:`tie_bound`), computed
  in float64 from the inputs PyTorch's layer saw;
- **following a near tie**: in an image where an earlier layer had a near
  tie (so this layer's inputs differ between the runtimes), each runtime's
  choice is, within rounding, the better of the two centers on the inputs
  its own layer saw;
- anything else is an error, reported with the layer, the point and both
  cosines.
"""
import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

# What --verify requires (the acceptance): shares of elements within
# atol and of assignment indices equal.
MIN_WITHIN_ATOL = 0.999
MIN_ASSIGNMENTS_EQUAL = 0.999

# Near-tie bound. A float32 cosine of two normalised d-vectors is off its
# exact value by about sqrt(d)·u·S (u = 2^-24 the unit roundoff, S = Σ|p_i c_i|
# <= 1 the magnitude of the dot product's terms: rounding errors of d products
# and partial sums add up as a random walk; d·u·S is the worst case), plus a
# few u from normalising the two vectors, plus the rounding the layer's inputs
# carry from the float32 convolutions and norms before it, which the two
# runtimes sum in different orders (their outputs agree to ~1e-6 relative,
# under 16 u). Each of the two cosines can be off in either direction in
# either runtime, so a flip is possible only when the exact gap is below about
# 2·(2·sqrt(d) + 6)·u·S; TIE_ULPS = 16 per sqrt(d) covers that for every d >= 4
# with room (d = 64: 7.6e-6; the measured Semantic FPN tie is 7.5e-8) and
# stays far below the gaps of a wrong assignment (typically 1e-3 and more).
FLOAT32_UNIT_ROUNDOFF = 2.0 ** -24
TIE_ULPS = 16.0
MAX_MESSAGES_PER_LAYER = 3


def tie_bound(d: int, magnitude) -> np.ndarray:
    """Largest float64 gap between two cosines that float32 rounding can
    flip: ``TIE_ULPS · sqrt(d) · 2^-24 · magnitude`` (see the comment above
    :data:`TIE_ULPS`); ``magnitude`` is Σ|p_i c_i| of the normalised vectors."""
    return TIE_ULPS * math.sqrt(d) * FLOAT32_UNIT_ROUNDOFF * np.asarray(magnitude,
                                                                      dtype=np.float64)


def _cosines64(points: np.ndarray, centers: np.ndarray, region: np.ndarray,
               point: np.ndarray, center: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """float64 cosine of ``points[region, point]`` with ``centers[region, center]``
    (normalised as ``F.normalize``: norms clamped at 1e-12) and Σ|p_i c_i|."""
    p = points[region, point].astype(np.float64)
    c = centers[region, center].astype(np.float64)
    p /= np.maximum(np.linalg.norm(p, axis=-1, keepdims=True), 1e-12)
    c /= np.maximum(np.linalg.norm(c, axis=-1, keepdims=True), 1e-12)
    prod = p * c
    return prod.sum(-1), np.abs(prod).sum(-1)


TIE, FOLLOWS_TIE, NOT_A_TIE = 0, 1, 2


@dataclass
class Differences:
    """Every differing assignment of one layer, rescored in float64.

    Arrays of one entry per differing point: ``region`` and ``point`` (its
    position in the op's (R, N) layout), ``center_torch`` / ``center_ort``
    (region-local center ids; -1 where ONNX Runtime's id is not a center of
    the point's region), ``cos_torch`` / ``cos_ort`` (float64 cosines of the
    point with those two centers, from PyTorch's inputs), ``ort_cos_torch``
    / ``ort_cos_ort`` (the same from ONNX Runtime's inputs; nan without
    them), ``bound`` (:func:`tie_bound`) and ``kind`` (:data:`TIE`,
    :data:`FOLLOWS_TIE` or :data:`NOT_A_TIE`).
    """
    region: np.ndarray
    point: np.ndarray
    center_torch: np.ndarray
    center_ort: np.ndarray
    cos_torch: np.ndarray
    cos_ort: np.ndarray
    ort_cos_torch: np.ndarray
    ort_cos_ort: np.ndarray
    bound: np.ndarray
    kind: np.ndarray

    def count(self, kind: int) -> int:
        return int((self.kind == kind).sum())


def classify_differences(points: np.ndarray, centers: np.ndarray, index_torch: np.ndarray,
                         index_ort: np.ndarray, ort_points: Optional[np.ndarray] = None,
                         ort_centers: Optional[np.ndarray] = None,
                         after_tie=False) -> Differences:
    """Tell the differing assignments of one layer apart: near ties, changes
    that follow an earlier near tie, errors.

    Args:
        points (np.ndarray): (R, N, d), the points PyTorch's layer assigned.
        centers (np.ndarray): (R, M, d), its centers.
        index_torch, index_ort (np.ndarray): (R, N) region-local center ids
            chosen by PyTorch and ONNX Runtime (-1: not a center of the
            point's region, always an error).
        ort_points, ort_centers (np.ndarray, optional): The same inputs as
            ONNX Runtime's layer computed them.
        after_tie (bool or np.ndarray): Whether an earlier layer had a near
            tie, for all regions or per region (R,). Only then can a
            difference that is not a near tie be :data:`FOLLOWS_TIE`: each
            runtime's choice must be the better of the two centers, within
            :func:`tie_bound`, on the inputs its own layer saw.

    Returns:
        Differences: One entry per point where the indices differ.
    """
    region, point = np.nonzero(index_torch != index_ort)
    a = index_torch[region, point]
    b = index_ort[region, point]
    valid = b >= 0
    bb = np.where(valid, b, 0)
    d = points.shape[-1]
    cos_a, mag_a = _cosines64(points, centers, region, point, a)
    cos_b, mag_b = _cosines64(points, centers, region, point, bb)
    bound = tie_bound(d, np.maximum(mag_a, mag_b))
    nan = np.full(len(region), np.nan)
    kind = np.full(len(region), NOT_A_TIE, dtype=np.int64)
    kind[valid & (np.abs(cos_a - cos_b) <= bound)] = TIE
    ort_a, ort_b = nan, nan.copy()
    if ort_points is not None and ort_centers is not None:
        ort_a, ort_mag_a = _cosines64(ort_points, ort_centers, region, point, a)
        ort_b, ort_mag_b = _cosines64(ort_points, ort_centers, region, point, bb)
        ort_bound = tie_bound(d, np.maximum(ort_mag_a, ort_mag_b))
        after = np.broadcast_to(np.asarray(after_tie, dtype=bool), (points.shape[0],))[region]
        consistent = (cos_a >= cos_b - bound) & (ort_b >= ort_a - ort_bound)
        kind[(kind == NOT_A_TIE) & valid & after & consistent] = FOLLOWS_TIE
    cos_b = np.where(valid, cos_b, np.nan)
    return Differences(region=region, point=point, center_torch=a, center_ort=b,
                       cos_torch=cos_a, cos_ort=cos_b, ort_cos_torch=ort_a,
                       ort_cos_ort=np.where(valid, ort_b, np.nan), bound=bound, kind=kind)


def global_to_regional(index: np.ndarray, layout: Sequence[int],
                       centers_hw: Sequence[int]) -> np.ndarray:
    """Inverse of :func:`fec_mm.models.assignments.regional_to_global`:
    (B, heads, fold·h, fold·w) global center ids -> (B·heads·fold², h·w)
    region-local ids, -1 where the center is not in the point's region."""
    B, heads, _, fold, h, w = (int(v) for v in layout)
    mh, mw = (int(v) for v in centers_hw)
    idx = index.reshape(B, heads, fold, h, fold, w).transpose(0, 1, 2, 4, 3, 5)
    row, col = idx // (fold * mw), idx % (fold * mw)
    fy = np.arange(fold).reshape(1, 1, fold, 1, 1, 1)
    fx = fy.reshape(1, 1, 1, fold, 1, 1)
    local = (row % mh) * mw + col % mw
    local = np.where((row // mh == fy) & (col // mw == fx), local, -1)
    return local.reshape(B * heads * fold * fold, h * w)


def point_position(region: int, point: int, layout: Sequence[int]) -> Tuple[int, int, int, int]:
    """(image, head, y, x) on the layer's input map of a point of the (R, N) layout."""
    B, heads, _, fold, h, w = (int(v) for v in layout)
    fx, fy, bh = region % fold, (region // fold) % fold, region // (fold * fold)
    return bh // heads, bh % heads, fy * h + point // w, fx * w + point % w


@dataclass
class LayerDifferences:
    """Differing assignments of one clustering layer, by kind.

    Attributes:
        name (str): The layer.
        differing (int): Indices that differ.
        near_ties (int): Of them, float32 near ties.
        follow_ties (int): Changes that follow an earlier near tie.
        errors (list[str]): The first few of the others, as messages naming
            the point and both cosines.
        num_errors (int): All of the others.
    """
    name: str
    differing: int
    near_ties: int = 0
    follow_ties: int = 0
    errors: List[str] = field(default_factory=list)
    num_errors: int = 0


def describe_error(name: str, diffs: Differences, i: int, layout: Sequence[int]) -> str:
    """A message for difference ``i`` that is not a near tie."""
    image, head, y, x = point_position(int(diffs.region[i]), int(diffs.point[i]), layout)
    a, b = int(diffs.center_torch[i]), int(diffs.center_ort[i])
    where = f'{name}, image {image} head {head} token (y={y}, x={x})'
    if b < 0:
        return (f'{where}: ONNX Runtime chose a center outside the token\'s region '
                f'(PyTorch: center {a})')
    text = (f'{where}: PyTorch chose center {a} (float64 cosine {diffs.cos_torch[i]:.10f}), '
            f'ONNX Runtime center {b} (cosine {diffs.cos_ort[i]:.10f}); gap '
            f'{abs(diffs.cos_torch[i] - diffs.cos_ort[i]):.3g} > near-tie bound '
            f'{diffs.bound[i]:.3g}')
    if not np.isnan(diffs.ort_cos_ort[i]):
        text += (f'; on ONNX Runtime\'s inputs {diffs.ort_cos_torch[i]:.10f} vs '
                 f'{diffs.ort_cos_ort[i]:.10f}')
    return text


@dataclass
class ParityReport:
    """Comparison of one ONNX Runtime run with PyTorch's.

    Attributes:
        shape (tuple): The input shape compared.
        max_abs_error (float): Over every element of every output.
        max_abs_value (float): Largest ``abs(PyTorch output)``, for scale.
        within_atol (float): Share of output elements with ``abs(ORT - PyTorch) <= atol``.
        atol (float): That tolerance.
        assignments_equal (float): Share of recorded assignment indices that
            are equal (nan when the model has no clustering layer).
        indices_differing (int): How many assignment indices differ, of
            ``indices_total``.
        indices_total (int): Recorded assignment indices compared.
        layers_differing (list[str]): Clustering layers with any index differing.
        classified (bool): The differences were rescored in float64
            (:func:`classify_differences`; the layers' inputs were compared).
        layers (list[LayerDifferences]): Per layer with differences, by kind
            (when ``classified``).
        within_atol_untied (float): ``within_atol`` over the images that had
            no near tie (nan when every image had one, or not ``classified``).
        tied_images (list[int]): Images (batch indices) with a near tie.
    """
    shape: tuple
    max_abs_error: float
    max_abs_value: float
    within_atol: float
    atol: float
    assignments_equal: float
    indices_differing: int = 0
    indices_total: int = 0
    layers_differing: List[str] = field(default_factory=list)
    classified: bool = False
    layers: List[LayerDifferences] = field(default_factory=list)
    within_atol_untied: float = float('nan')
    tied_images: List[int] = field(default_factory=list)

    @property
    def near_ties(self) -> int:
        """Near ties over all layers."""
        return sum(layer.near_ties for layer in self.layers)

    @property
    def follow_ties(self) -> int:
        """Differences that follow a near tie, over all layers."""
        return sum(layer.follow_ties for layer in self.layers)

    @property
    def errors(self) -> int:
        """Differing assignments that are neither near ties nor follow one."""
        return sum(layer.num_errors for layer in self.layers)

    @property
    def passed(self) -> bool:
        """Without ``classified``: at least :data:`MIN_WITHIN_ATOL` of the
        elements within ``atol`` and :data:`MIN_ASSIGNMENTS_EQUAL` of the
        assignments equal. With it: every differing assignment a near tie or
        following one, and :data:`MIN_WITHIN_ATOL` of the elements within
        ``atol`` in the images without a near tie (a near tie changes its
        image's outputs downstream by design: their elementwise share is
        reported, not required)."""
        if not self.classified:
            return bool(self.within_atol >= MIN_WITHIN_ATOL
                        and (np.isnan(self.assignments_equal)
                             or self.assignments_equal >= MIN_ASSIGNMENTS_EQUAL))
        if self.errors:
            return False
        if not self.tied_images:
            return bool(self.within_atol >= MIN_WITHIN_ATOL)
        return bool(np.isnan(self.within_atol_untied)
                    or self.within_atol_untied >= MIN_WITHIN_ATOL)

    def summary(self) -> str:
        shape = 'x'.join(str(s) for s in self.shape)
        text = (f'input {shape}: max |ORT - PyTorch| {self.max_abs_error:.3g} '
                f'(outputs up to {self.max_abs_value:.3g}), '
                f'{100 * self.within_atol:.3f}% of elements within {self.atol:g}')
        if not np.isnan(self.assignments_equal):
            text += f', {100 * self.assignments_equal:.3f}% of assignments equal'
            if self.layers_differing:
                text += (f' ({self.indices_differing} of {self.indices_total:,} differ, in '
                         f'{len(self.layers_differing)} layers, first '
                         f'{self.layers_differing[0]})')
        if self.classified and self.layers_differing:
            ties = ', '.join(f'{layer.name} {layer.near_ties}' for layer in self.layers
                             if layer.near_ties)
            text += (f'; float32 near ties: {self.near_ties}' + (f' ({ties})' if ties else '')
                     + f', following them: {self.follow_ties}, not near ties: {self.errors}')
            if self.tied_images:
                untied = ('no image without one' if np.isnan(self.within_atol_untied) else
                          f'{100 * self.within_atol_untied:.3f}% within {self.atol:g} in the '
                          'others')
                text += (f'; elementwise share not required in image(s) '
                         f'{", ".join(map(str, self.tied_images))} (downstream of a near '
                         f'tie; {untied})')
            for layer in self.layers:
                for message in layer.errors:
                    text += f'; NOT A NEAR TIE: {message}'
                if layer.num_errors > len(layer.errors):
                    text += f'; {layer.num_errors - len(layer.errors)} more in {layer.name}'
        return text


def onnxruntime_session(model_bytes: bytes, threads: int = 0):
    """A CPU ONNX Runtime session of a serialised model (``threads`` 0: ORT's default)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=['CPUExecutionProvider'])


def run_session(session, x: Tensor) -> List[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def compare(ort_outputs: Sequence[np.ndarray], torch_outputs: Sequence[Tensor],
            num_features: int, layer_names: Sequence[str], shape: tuple,
            atol: float = 1e-4, layouts: Optional[Sequence[tuple]] = None) -> ParityReport:
    """Compare the first ``num_features`` outputs elementwise and the next
    ones (assignment indices, one per name of ``layer_names``) for equality.

    With ``layouts`` (one ``(layout, centers_hw)`` per layer, as
    :class:`~fec_mm.deployment.model_parts.WithAssignments` with
    ``with_inputs`` records them), the outputs end with each layer's points
    and centers, and every differing index is classified
    (:func:`classify_differences`), layers in call order.
    """
    if len(ort_outputs) != len(torch_outputs):
        raise ValueError(f'ONNX Runtime gave {len(ort_outputs)} outputs, PyTorch '
                         f'{len(torch_outputs)}')
    num_layers = len(layer_names)
    classified = layouts is not None and num_layers > 0
    if classified and len(torch_outputs) != num_features + 3 * num_layers:
        raise ValueError(f'expected {num_features} features, {num_layers} indices and '
                         f'{2 * num_layers} layer inputs, got {len(torch_outputs)} outputs')
    errors, values = [], []
    for o, t in zip(ort_outputs[:num_features], torch_outputs[:num_features]):
        t = t.detach().cpu().numpy()
        if o.shape != t.shape:
            raise ValueError(f'output shapes differ: ONNX Runtime {o.shape}, PyTorch {t.shape}')
        errors.append(np.abs(o.astype(np.float64) - t.astype(np.float64)))
        values.append(np.abs(t).ravel())
    err = np.concatenate([e.ravel() for e in errors])
    equal = total = 0
    differing = []
    indices = list(zip(ort_outputs[num_features:num_features + num_layers],
                       torch_outputs[num_features:num_features + num_layers]))
    for name, (o, t) in zip(layer_names, indices):
        t = t.cpu().numpy()
        same = int((o == t).sum())
        equal += same
        total += t.size
        if same != t.size:
            differing.append(name)
    report = ParityReport(
        shape=tuple(shape), max_abs_error=float(err.max()),
        max_abs_value=float(np.concatenate(values).max()),
        within_atol=float((err <= atol).mean()), atol=atol,
        assignments_equal=equal / total if total else float('nan'),
        indices_differing=total - equal, indices_total=total, layers_differing=differing,
        classified=classified)
    if classified:
        inputs = [(ort_outputs[i], torch_outputs[i].detach().cpu().numpy())
                  for i in range(num_features + num_layers, len(torch_outputs))]
        _classify(report, layer_names, indices, inputs, layouts, errors, atol)
    return report


def _classify(report: ParityReport, layer_names: Sequence[str], indices: list, inputs: list,
              layouts: Sequence[tuple], errors: List[np.ndarray], atol: float) -> None:
    """Fill ``report.layers`` / ``tied_images`` / ``within_atol_untied``."""
    batch = int(layouts[0][0][0])
    tied = np.zeros(batch, dtype=bool)  # images with a near tie in an earlier layer
    for i, (name, (o, t), (layout, centers_hw)) in enumerate(zip(layer_names, indices,
                                                                 layouts)):
        t = t.cpu().numpy()
        if (o == t).all():
            continue
        (ort_points, points), (ort_centers, centers) = inputs[2 * i], inputs[2 * i + 1]
        B, heads, _, fold = (int(v) for v in layout[:4])
        per_image = heads * fold * fold
        diffs = classify_differences(
            points, centers, global_to_regional(t, layout, centers_hw),
            global_to_regional(o, layout, centers_hw), ort_points, ort_centers,
            after_tie=np.repeat(tied, per_image))
        layer = LayerDifferences(name=name, differing=len(diffs.kind),
                                 near_ties=diffs.count(TIE),
                                 follow_ties=diffs.count(FOLLOWS_TIE),
                                 num_errors=diffs.count(NOT_A_TIE))
        for j in np.nonzero(diffs.kind == NOT_A_TIE)[0][:MAX_MESSAGES_PER_LAYER]:
            layer.errors.append(describe_error(name, diffs, int(j), layout))
        report.layers.append(layer)
        tied[np.unique(diffs.region[diffs.kind == TIE] // per_image)] = True
    report.tied_images = [int(b) for b in np.nonzero(tied)[0]]
    untied = ~tied
    if report.tied_images and untied.any():
        kept = [e[untied] for e in errors if e.ndim and e.shape[0] == batch]
        if len(kept) == len(errors):
            flat = np.concatenate([e.ravel() for e in kept])
            report.within_atol_untied = float((flat <= atol).mean())


def check_parity(session, module: torch.nn.Module, x: Tensor, num_features: int,
                 layer_names: Sequence[str], atol: float = 1e-4) -> ParityReport:
    """Run ``session`` and ``module`` (PyTorch, no grad) on ``x`` and compare.

    A :class:`~fec_mm.deployment.model_parts.WithAssignments` module with
    ``with_inputs`` has its differing assignments classified (see
    :func:`compare`); ``layer_names`` are then its ``names`` of this run.
    """
    with torch.no_grad():
        out = module(x)
    out = (out,) if isinstance(out, Tensor) else tuple(out)
    layouts = module.layouts if getattr(module, 'with_inputs', False) else None
    return compare(run_session(session, x), out, num_features, layer_names,
                   tuple(x.shape), atol, layouts=layouts)
