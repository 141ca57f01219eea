"""Numbers per pooling stage of a :class:`~.cluster_maps.ClusterMaps` (docs/notes/design.md §5).

For the pooling into stage k, over the real (non-padding) part of image b:

- ``clusters``: tokens of stage k's grid that hold a real pixel;
- ``non_empty``: stage-k clusters that some pixel is traced to;
- ``effective``: exp(entropy of the clusters' pixel shares), the number of
  equal clusters with the same entropy;
- ``own_cell_share``: share of the pooling's input tokens that join the
  center of their own 2×2 cell (near 1: the pooling is an average pooling);
- ``fragmentation``: 4-connected components per non-empty cluster (1: every
  cluster is one connected piece of the image);
- ``cluster_branch_share``: ‖norm(g)‖ / (‖norm(g)‖ + ‖conv_skip(x)‖), the
  Frobenius norms of the pooling output's two summands over the real
  tokens (0: the output is the skip convolution alone).
"""
from typing import Dict, List

import numpy as np
import torch
from skimage.measure import label

from .cluster_maps import ClusterMaps, valid_grid


def effective_number(sizes: torch.Tensor) -> float:
    """exp(entropy) of a histogram (zeros ignored)."""
    p = sizes[sizes > 0].double()
    p = p / p.sum()
    return float(torch.exp(-(p * p.log()).sum()))


def count_components(token_map: np.ndarray) -> int:
    """4-connected regions of equal id in a 2-D map (one labelling pass,
    no loop over clusters)."""
    return int(label(token_map, background=-1, connectivity=1).max())


def stage_stats(maps: ClusterMaps, b: int = 0) -> List[Dict[str, float]]:
    """The numbers above for image ``b``, one dict per pooling (stage 1 first)."""
    stats = []
    for k in range(1, maps.num_stages):
        pixel = maps.pixel_maps[k][b]
        sizes = torch.bincount(pixel.flatten(), minlength=maps.grids[k][0] * maps.grids[k][1])
        rows0, cols0 = valid_grid(maps.image_size, 0)
        stem = maps.stem_maps[k][b, :rows0, :cols0].cpu().numpy()
        non_empty = int((sizes > 0).sum())

        pool = maps.poolings[k - 1]
        rows_in, cols_in = valid_grid(maps.image_size, k - 1)
        index = pool.index[b, 0, :rows_in, :cols_in]
        y = torch.arange(rows_in, device=index.device)[:, None]
        x = torch.arange(cols_in, device=index.device)[None, :]
        own = (y // 2) * pool.center_grid[1] + x // 2

        rows, cols = valid_grid(maps.image_size, k)
        br = maps.branches[k - 1]
        cluster = br.cluster[b, :, :rows, :cols].double().norm()
        skip = br.skip[b, :, :rows, :cols].double().norm()
        stats.append(dict(
            stage=k,
            clusters=rows * cols,
            non_empty=non_empty,
            effective=effective_number(sizes),
            own_cell_share=float((index == own).double().mean()),
            fragmentation=count_components(stem) / non_empty,
            cluster_branch_share=float(cluster / (cluster + skip)),
        ))
    return stats
