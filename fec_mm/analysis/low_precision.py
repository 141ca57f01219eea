"""What half-precision autocast does to FEC's clustering (docs/notes/low_precision.md).

Every clustering layer (cluster pooling, cluster encoder) picks each point's
center by an argmax of cosine similarities. Under ``torch.autocast`` with
bfloat16 or float16 the 1×1 convolutions that make the clustering features
round to 8 (bf16) or 11 (fp16) significant bits, so near-ties can flip, and a
flipped point then carries another cluster's value; the one-group norms
spread that over the map. :func:`assignment_flips` counts the flips per
layer against float32, on the same weights and images, with the assignments
the ops really used (:func:`fec_mm.models.record_assignments`).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torch import Tensor

from ..measure import best_time
from ..models.assignments import clustering_layers, record_assignments
from ..models.fec import FEC


@dataclass
class FlipReport:
    """Flips of one low-precision run against float32.

    Attributes:
        dtype (str): 'bfloat16' or 'float16'.
        fp32_assignments (bool): Whether the layers clustered in float32.
        flips (dict[str, float]): Layer name -> share of points (over batch,
            heads and pixels) whose center differs from float32's.
        output_error (list[float]): Per output map, max |low - fp32| over
            the map divided by max |fp32|.
        time_s (float, optional): Fastest forward time, when timed.
    """
    dtype: str
    fp32_assignments: bool
    flips: Dict[str, float]
    output_error: List[float]
    time_s: Optional[float] = None


def _set_fp32_assignments(backbone: nn.Module, value: bool) -> None:
    for _, layer in clustering_layers(backbone):
        layer.fp32_assignments = value


def _run(backbone: FEC, images: Tensor, dtype: Optional[torch.dtype]):
    device = images.device.type
    with torch.no_grad(), record_assignments(backbone) as rec, \
            torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        outs = backbone(images)
    return [o.float() for o in outs], {n: r.index for n, r in rec.by_name.items()}


def assignment_flips(backbone: FEC, images: Tensor,
                     dtypes=(torch.bfloat16, torch.float16),
                     repeat: int = 0) -> List[FlipReport]:
    """Flipped assignments per layer under autocast vs float32.

    Args:
        backbone (FEC): In eval mode; its ``fp32_assignments`` is toggled
            during the runs and restored.
        images (Tensor): (B, 3, H, W) normalised images.
        dtypes: Autocast dtypes to try, each with and without
            ``fp32_assignments``.
        repeat (int): Also time each forward (fastest of ``repeat``); 0: no.

    Returns:
        list[FlipReport]: One per (dtype, fp32_assignments), and a float32
        entry first (no flips; its time is the baseline).
    """
    layers = clustering_layers(backbone)
    saved = [layer.fp32_assignments for _, layer in layers]
    reports = []
    try:
        _set_fp32_assignments(backbone, False)
        ref_outs, ref_index = _run(backbone, images, None)
        runs = [(None, False)] + [(d, e) for d in dtypes for e in (False, True)]
        for dtype, exact in runs:
            _set_fp32_assignments(backbone, exact)
            outs, index = _run(backbone, images, dtype)
            flips = {n: float((index[n] != ref).float().mean()) for n, ref in ref_index.items()}
            errors = [float((o - r).abs().max() / r.abs().max()) for o, r in zip(outs, ref_outs)]
            time_s = None
            if repeat:
                time_s = best_time(lambda: _run(backbone, images, dtype), repeat)
            reports.append(FlipReport(str(dtype or torch.float32).replace('torch.', ''),
                                      exact, flips, errors, time_s))
    finally:
        for (_, layer), value in zip(layers, saved):
            layer.fp32_assignments = value
    return reports


def markdown_table(reports: List[FlipReport]) -> str:
    """Layers as rows, runs as columns: the share of flipped points in %."""
    names = list(reports[0].flips)
    head = ['layer'] + [f'{r.dtype}{" + fp32_assignments" if r.fp32_assignments else ""}'
                        for r in reports]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name in names:
        lines.append('| ' + ' | '.join([name.removeprefix('backbone.')] +
                                       [f'{100 * r.flips[name]:.2f}' for r in reports]) + ' |')
    lines.append('| max output error (rel.) | ' + ' | '.join(
        f'{max(r.output_error):.2e}' for r in reports) + ' |')
    if all(r.time_s is not None for r in reports):
        lines.append('| forward time (s) | ' + ' | '.join(f'{r.time_s:.3f}' for r in reports)
                     + ' |')
    return '\n'.join(lines)
