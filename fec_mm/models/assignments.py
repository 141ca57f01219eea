"""Recording the cluster assignments an FEC model really used (docs/notes/design.md §5).

``with record_assignments(model) as rec:`` makes every ``ClusterPooling``
and every ``ClusterEncoder`` inside ``model`` hand the recorder the exact
index tensor its clustering op aggregated with (and the cosine of each point
with its chosen center), in global ids of the layer's center grid, also
when the regions are folded. Nothing is recomputed: the index is what the
op (any ``ops_impl``) returned. Off by default; when off, the layers run the
plain op and pay nothing. Works under ``torch.no_grad`` and while exporting
(the recorded tensors can be returned as extra graph outputs).

Center grids:

- pooling into stage k: the centers are the 2×2 cells of each region, so the
  center grid is the stage-k map itself (H/2 × W/2 of the input map) and
  ``index[b, 0, y, x]`` is the flat position on that map of the token that
  input token (y, x) was pooled into;
- encoder (mixer) of a block: each region has ``num_centers`` × ``num_centers``
  centers; region (fy, fx)'s center (cy, cx) is cell (fy·nc + cy, fx·nc + cx)
  of a (fold·nc) × (fold·nc) grid, and ``index[b, head, y, x]`` is its flat id.
"""
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn as nn
from torch import Tensor


@dataclass
class AssignmentRecord:
    """What one clustering layer aggregated with, for one forward pass.

    Attributes:
        name (str): Module name inside the recorded model, e.g.
            ``'backbone.cluster_poolings.0'`` or
            ``'backbone.stages.1.0.token_mixer'``.
        kind (str): ``'pool'`` or ``'encode'``.
        index (Tensor): (B, heads, H, W) int64, global center id of every
            input token (heads = 1 for poolings).
        cos (Tensor): (B, heads, H, W), cosine similarity of each token's
            clustering feature with its chosen center.
        center_grid (tuple[int, int]): (rows, cols) of the center grid;
            ids are ``row * cols + col``.
        fold (int): Regions per side.
        layout (tuple): (B, heads, d, fold, h, w) of the op's points
            (:func:`~fec_mm.models.region_partition.map_to_points`).
        centers_hw (tuple[int, int]): (mh, mw) centers per region.
        points (Tensor, optional): (B·heads·fold², h·w, d), the clustering
            features the op assigned, as it saw them (only with
            ``AssignmentRecorder(keep_inputs=True)``).
        centers (Tensor, optional): (B·heads·fold², mh·mw, d), its centers
            (idem).
    """
    name: str
    kind: str
    index: Tensor
    cos: Tensor
    center_grid: Tuple[int, int]
    fold: int
    layout: Optional[Tuple[int, ...]] = None
    centers_hw: Optional[Tuple[int, int]] = None
    points: Optional[Tensor] = None
    centers: Optional[Tensor] = None

    @property
    def num_centers(self) -> int:
        """Size of the center grid (the upper bound of ``index``)."""
        return self.center_grid[0] * self.center_grid[1]


def regional_to_global(index: Tensor, layout: Tuple[int, ...],
                       centers_hw: Tuple[int, int]) -> Tensor:
    """Map a clustering op's per-region index to global center ids on the map.

    Args:
        index (Tensor): (B·heads·fold², h·w), center of each point of its
            region, in ``0 .. mh·mw - 1`` (row-major within the region).
        layout (tuple): The layout of :func:`map_to_points`:
            (B, heads, d, fold, h, w).
        centers_hw (tuple[int, int]): (mh, mw) centers per region.

    Returns:
        Tensor: (B, heads, fold·h, fold·w) int64 ids on the
        (fold·mh) × (fold·mw) center grid.
    """
    B, heads, _, fold, h, w = layout
    mh, mw = centers_hw
    idx = index.reshape(B, heads, fold, fold, h, w)
    fy = torch.arange(fold, device=idx.device).view(1, 1, fold, 1, 1, 1)
    fx = fy.view(1, 1, 1, fold, 1, 1)
    row_in_region = idx // mw
    rows = fy * mh + row_in_region
    # Not `idx % mw`: the ONNX exporter only translates a remainder by a
    # constant, and mw is symbolic in an export with dynamic H, W.
    cols = fx * mw + (idx - row_in_region * mw)
    gid = rows * (fold * mw) + cols
    return gid.permute(0, 1, 2, 4, 3, 5).reshape(B, heads, fold * h, fold * w)


def regional_to_map(x: Tensor, layout: Tuple[int, ...]) -> Tensor:
    """(B·heads·fold², h·w) per-point values -> (B, heads, fold·h, fold·w)."""
    B, heads, _, fold, h, w = layout
    x = x.reshape(B, heads, fold, fold, h, w).permute(0, 1, 2, 4, 3, 5)
    return x.reshape(B, heads, fold * h, fold * w)


class AssignmentRecorder:
    """Collects :class:`AssignmentRecord` s; see :func:`record_assignments`.

    ``records`` keeps every call in order; ``by_name`` the last call of each
    layer. Call :meth:`clear` between forward passes to keep only one.

    Args:
        keep_inputs (bool): Also keep each op's points and centers (the
            inputs of its argmax; what ``--verify`` rescores near-ties
            with). Default False.
    """

    def __init__(self, keep_inputs: bool = False) -> None:
        self.records: List[AssignmentRecord] = []
        self.keep_inputs = keep_inputs
        self._names: Dict[int, str] = {}

    def __call__(self, module: nn.Module, kind: str, index: Tensor, cos: Tensor,
                 layout: Tuple[int, ...], centers_hw: Tuple[int, int],
                 points: Optional[Tensor] = None, centers: Optional[Tensor] = None) -> None:
        fold = layout[3]
        keep = self.keep_inputs and points is not None and centers is not None
        self.records.append(AssignmentRecord(
            name=self._names.get(id(module), type(module).__name__), kind=kind,
            index=regional_to_global(index.detach(), layout, centers_hw),
            cos=regional_to_map(cos.detach(), layout),
            center_grid=(fold * centers_hw[0], fold * centers_hw[1]), fold=fold,
            layout=tuple(layout), centers_hw=tuple(centers_hw),
            points=points.detach() if keep else None,
            centers=centers.detach() if keep else None))

    @property
    def by_name(self) -> Dict[str, AssignmentRecord]:
        """The last record of each layer, by module name, in call order."""
        return {r.name: r for r in self.records}

    def poolings(self) -> List[AssignmentRecord]:
        """The pooling records of the last forward pass, first stage first."""
        return [r for r in self.by_name.values() if r.kind == 'pool']

    def encoders(self) -> List[AssignmentRecord]:
        """The encoder records of the last forward pass, in call order."""
        return [r for r in self.by_name.values() if r.kind == 'encode']

    def clear(self) -> None:
        self.records.clear()


def clustering_layers(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """(name, module) of every ClusterPooling and ClusterEncoder in ``model``."""
    from .cluster_encoder import ClusterEncoder
    from .cluster_pooling import ClusterPooling
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (ClusterEncoder, ClusterPooling))]


@contextmanager
def record_assignments(model: nn.Module,
                       recorder: Optional[AssignmentRecorder] = None
                       ) -> Iterator[AssignmentRecorder]:
    """Record the assignments of every clustering layer of ``model``.

    Example::

        with torch.no_grad(), record_assignments(model.backbone) as rec:
            model.backbone(images)
        pool1 = rec.poolings()[0].index   # (B, 1, H/4, W/4) ids on H/8 × W/8

    Raises:
        ValueError: if ``model`` holds no FEC clustering layer.
    """
    layers = clustering_layers(model)
    if not layers:
        raise ValueError(f'record_assignments: {type(model).__name__} holds no FEC '
                         'clustering layer (ClusterPooling / ClusterEncoder)')
    rec = recorder if recorder is not None else AssignmentRecorder()
    previous = []
    for name, module in layers:
        rec._names[id(module)] = name
        previous.append((module, module.recorder))
        module.recorder = rec
    try:
        yield rec
    finally:
        for module, old in previous:
            module.recorder = old
