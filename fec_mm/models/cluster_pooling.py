"""Clustering-based feature pooling, the downsampling between stages (docs/notes/design.md §2)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from torch import Tensor

from ..ops import cluster_pool
from .cluster_encoder import in_fp32
from .pointwise import conv_to_points, matmul_path
from .region_partition import points_to_map


class ClusterPooling(nn.Module):
    """Halve the resolution by clustering each region around its 2×2-pooled
    centers; the cluster representatives are the downsampled map.

    ``conv_f`` only chooses the assignment (an argmax), so it never gets a
    gradient: as in the authors' training it keeps its initial values. It is
    marked as not requiring grad, so DDP needs no ``find_unused_parameters``.

    Args:
        in_channels (int): C_k.
        out_channels (int): C_{k+1}.
        fold (int): Regions per side (the next stage's fold).
        norm_cfg (dict): Norm after the pooling.
        ops_impl (str): Implementation of the clustering op.
        fp32_assignments (bool): Under autocast, cluster in float32
            (:func:`~fec_mm.models.cluster_encoder.in_fp32`). Default False.
    """

    def __init__(self, in_channels: int, out_channels: int, fold: int,
                 norm_cfg: dict, ops_impl: str = 'auto', fp32_assignments: bool = False) -> None:
        super().__init__()
        self.fp32_assignments = fp32_assignments
        self.fold = fold
        self.ops_impl = ops_impl
        self.conv_skip = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1)
        self.conv_f = nn.Conv2d(in_channels, out_channels, 1)
        self.conv_v = nn.Conv2d(in_channels, out_channels, 1)
        self.conv_f.requires_grad_(False)
        self.norm = build_norm_layer(norm_cfg, out_channels)[1]
        # Set by fec_mm.models.assignments.record_assignments; None: no cost.
        self.recorder = None

    def forward(self, x: Tensor) -> Tensor:
        """(B, C_k, H, W) -> (B, C_{k+1}, H/2, W/2); H, W divisible by 2·fold."""
        if self.ops_impl != 'reference' and matmul_path((x,), self, self.conv_f, self.conv_v):
            # CPU inference: conv_f and conv_v as products straight into the
            # points (fec_mm.models.pointwise); the reference runs the layers.
            pooled = self._cluster(x, matmuls=True)
        else:
            pooled = in_fp32(self._cluster, x, self.fp32_assignments)
        return self.conv_skip(x) + self.norm(pooled)

    def _cluster(self, x: Tensor, matmuls: bool = False) -> Tensor:
        """The clustered half of the pooling: (B, C_k, H, W) -> (B, C_{k+1}, H/2, W/2);
        with ``matmuls``, conv_f and conv_v as products (:func:`conv_to_points`)."""
        with torch.no_grad():
            points, layout = conv_to_points(x, self.conv_f, 1, self.fold, matmuls)
        values, _ = conv_to_points(x, self.conv_v, 1, self.fold, matmuls)
        B, _, d, fold, h, w = layout
        centers = F.avg_pool2d(points.reshape(-1, h, w, d).permute(0, 3, 1, 2), 2)
        value_centers = F.avg_pool2d(values.reshape(-1, h, w, d).permute(0, 3, 1, 2), 2)
        if not matmuls and self.ops_impl != 'reference':
            # copied once here, not in the fused op's forward and backward
            points, values = points.contiguous(), values.contiguous()
        centers = centers.flatten(2).transpose(1, 2)
        value_centers = value_centers.flatten(2).transpose(1, 2)
        if self.recorder is None:
            pooled = cluster_pool(points, values, centers, value_centers, impl=self.ops_impl)
        else:
            pooled, index, cos = cluster_pool(points, values, centers, value_centers,
                                              impl=self.ops_impl, return_assignment=True)
            self.recorder(self, 'pool', index, cos, layout, (h // 2, w // 2),
                          points=points, centers=centers)
        return points_to_map(pooled, (B, 1, d, fold, h // 2, w // 2))
