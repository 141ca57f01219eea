"""Clustering-based feature encoding, the token mixer of FEC (docs/notes/design.md §2) and of
Context Clusters (docs/notes/design.md §7)."""
from typing import Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..ops import center_pool, cluster_encode
from .hooks import refuse_hooks
from .pointwise import conv_to_points, matmul_path, points_to_conv1x1
from .region_partition import points_to_map


def in_fp32(fn: Callable[[Tensor], Tensor], x: Tensor, enabled: bool) -> Tensor:
    """``fn(x)``; with ``enabled`` while autocast is on for ``x``'s device,
    with autocast off and ``x`` in float32.

    A clustering layer runs its clustering through this: its 1×1
    convolutions (f, v), the centers, the cosine similarities and the argmax
    are then float32 computations on this input, so the assignments do not
    flip from half-precision rounding (measured in docs/notes/low_precision.md);
    everything else stays in the autocast dtype.
    """
    device = x.device.type
    if enabled and torch.is_autocast_enabled(device):
        with torch.autocast(device, enabled=False):
            return fn(x.float())
    return fn(x)


class ClusterEncoder(nn.Module):
    """Cluster the points of each region around pooled centers and dispatch
    each cluster's aggregate back to its members.

    Args:
        channels (int): Input and output channels C.
        heads (int): Heads h; each clusters its own d channels.
        head_dim (int): Channels d per head.
        num_centers (int): Centers per side of each region (M = num_centers²).
        fold (int): Regions per side (fold² regions clustered independently).
        ops_impl (str): Implementation of the clustering op, see
            :func:`fec_mm.ops.cluster_encode`.
        aggregation (str): Center update: 'mean' (FEC) or 'similarity'
            (Context Clusters), see :func:`fec_mm.ops.cluster_encode`.
        fp32_assignments (bool): Under autocast, cluster in float32 (see
            :func:`in_fp32`). Default False.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, num_centers: int,
                 fold: int, ops_impl: str = 'auto', aggregation: str = 'mean',
                 fp32_assignments: bool = False) -> None:
        super().__init__()
        self.fp32_assignments = fp32_assignments
        self.heads = heads
        self.num_centers = num_centers
        self.fold = fold
        self.ops_impl = ops_impl
        self.aggregation = aggregation
        # Names follow the authors' checkpoints.
        self.f = nn.Conv2d(channels, heads * head_dim, 1)
        self.v = nn.Conv2d(channels, heads * head_dim, 1)
        self.proj = nn.Conv2d(heads * head_dim, channels, 1)
        self.sim_alpha = nn.Parameter(torch.ones(1))
        self.sim_beta = nn.Parameter(torch.zeros(1))
        # Set by fec_mm.models.assignments.record_assignments; None: no cost.
        self.recorder = None

    def forward(self, x: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W); H and W divisible by ``fold``.

        ``scale`` (C,) multiplies the output through the projection's weights,
        so the scaled output is not saved for backward.
        """
        refuse_hooks(self, proj=self.proj)
        weight, bias = self.proj.weight, self.proj.bias
        if scale is not None:
            weight, bias = weight * scale[:, None, None, None], bias * scale
        if self.ops_impl != 'reference' and matmul_path((x, scale), self, self.f, self.v):
            # CPU inference: the 1×1 convolutions as products on the points
            # (fec_mm.models.pointwise); the reference runs the plain layers.
            return points_to_conv1x1(*self._cluster_points(x, matmuls=True), weight, bias)
        return F.conv2d(in_fp32(self._cluster, x, self.fp32_assignments), weight, bias)

    def _cluster(self, x: Tensor) -> Tensor:
        """Mixer steps 1-7 (docs/notes/design.md §2): (B, C, H, W) -> (B, h·d, H, W)."""
        return points_to_map(*self._cluster_points(x))

    def _cluster_points(self, x: Tensor, matmuls: bool = False) -> Tuple[Tensor, Tuple[int, ...]]:
        """Mixer steps 1-7 on (B, C, H, W): the output points (B·h·fold², N, d)
        and their layout (:func:`~fec_mm.models.region_partition.map_to_points`);
        with ``matmuls``, f and v as products (:func:`conv_to_points`)."""
        points, layout = conv_to_points(x, self.f, self.heads, self.fold, matmuls)
        values, _ = conv_to_points(x, self.v, self.heads, self.fold, matmuls)
        _, _, d, _, h, w = layout
        size = (self.num_centers, self.num_centers)
        centers = center_pool(
            points.reshape(-1, h, w, d).permute(0, 3, 1, 2), size).flatten(2).transpose(1, 2)
        value_centers = center_pool(
            values.reshape(-1, h, w, d).permute(0, 3, 1, 2), size).flatten(2).transpose(1, 2)
        if not matmuls and self.ops_impl != 'reference':
            # the fused ops need contiguous points: copied once here, not in
            # their forward and again in their backward (after the pooling,
            # which then sees the layout, and gives the values, it always had)
            points, values = points.contiguous(), values.contiguous()
        if self.recorder is None:
            out = cluster_encode(points, values, centers, value_centers,
                                 self.sim_alpha, self.sim_beta, impl=self.ops_impl,
                                 aggregation=self.aggregation)
        else:
            out, index, cos = cluster_encode(points, values, centers, value_centers,
                                             self.sim_alpha, self.sim_beta,
                                             impl=self.ops_impl, return_assignment=True,
                                             aggregation=self.aggregation)
            self.recorder(self, 'encode', index, cos, layout, size, points=points,
                          centers=centers)
        return out, layout
