"""Cluster maps of Context Clusters models: each encoding block's per-head
assignments within its regions, traced to pixels.

CoC has no cluster pooling (its stages are joined by strided convolutions),
so there is no chain of clusters across stages as in FEC (docs/notes/design.md §5): each
block's mixer clusters the tokens of its stage-k map on its own. Token (y, x)
of stage k covers the pixels [y·s, (y+1)·s) × [x·s, (x+1)·s) with s = 4·2^k
(the stem's 4×4 stride-4 patches, then stride-2 3×3 convolutions with padding
1), so tracing a block's assignment to pixels is an exact nearest-neighbour
expansion. Ids are global on the block's center grid
(:class:`fec_mm.models.AssignmentRecord`): region (fy, fx)'s centers are
cells (fy·nc + cy, fx·nc + cx) of a (fold·nc)² grid, so clusters of different
regions never share an id.
"""
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..models import ContextCluster
from ..models.assignments import record_assignments
from .trace import to_pixels


@dataclass
class BlockClusters:
    """One encoding block's clusters on the image.

    Attributes:
        name (str): Module name, e.g. ``'stages.1.0.token_mixer'``.
        stage (int): Stage k of the block.
        pixels (Tensor): (B, heads, H, W) int64 center id of every pixel.
        cos (Tensor): (B, heads, Hk, Wk) cosine of each token with its center.
        center_grid (tuple[int, int]): Rows and columns of the center grid.
        fold (int): Regions per side.
    """
    name: str
    stage: int
    pixels: Tensor
    cos: Tensor
    center_grid: tuple
    fold: int


def coc_cluster_maps(backbone: ContextCluster, images: Tensor) -> List[BlockClusters]:
    """Run ``backbone`` on ``images`` (B, 3, H, W) and return every encoding
    block's assignments traced to pixels, first block first.

    Raises:
        TypeError: ``backbone`` is not a :class:`ContextCluster`.
        ValueError: From the backbone, for an input its folds do not divide.
    """
    if not isinstance(backbone, ContextCluster):
        raise TypeError(f'coc_cluster_maps: expected a ContextCluster backbone, got '
                        f'{type(backbone).__name__} (FEC models: fec_mm.visualization.'
                        'cluster_maps)')
    was_training = backbone.training
    backbone.eval()
    try:
        with torch.no_grad(), record_assignments(backbone) as rec:
            backbone(images)
    finally:
        backbone.train(was_training)
    out = []
    for r in rec.encoders():
        stage = int(r.name.split('.')[1])
        out.append(BlockClusters(name=r.name, stage=stage,
                                 pixels=to_pixels(r.index, 4 * 2**stage), cos=r.cos,
                                 center_grid=r.center_grid, fold=r.fold))
    return out


def save_coc_cluster_maps(blocks: List[BlockClusters], image: np.ndarray, out_dir: str,
                          alpha: float = 0.5, b: int = 0,
                          stages: Optional[List[int]] = None,
                          only_blocks: Optional[Sequence[Tuple[int, int]]] = None,
                          heads: Optional[Sequence[int]] = None,
                          prefix: str = '') -> List[str]:
    """One PNG sheet per block: its heads side by side over ``image``.

    Args:
        blocks: From :func:`coc_cluster_maps`.
        image (np.ndarray): (H, W, 3) uint8 RGB, the (padded) input image.
        out_dir (str): Folder, created if needed.
        alpha (float): Opacity of the cluster colours. Default 0.5.
        b (int): Image of the batch. Default 0.
        stages (list[int], optional): Only these stages.
        only_blocks (list[tuple[int, int]], optional): Only these (stage, block).
        heads (list[int], optional): Only these heads (default all).
        prefix (str): Prepended to the file names. Default ''.

    Returns:
        list[str]: The written files, ``{prefix}stage{k}_block{j}.png``.
    """
    from .render import draw_sheet, overlay, palette, save_png
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    counts: Dict[int, int] = {}
    for block in blocks:
        j = counts.get(block.stage, 0)
        counts[block.stage] = j + 1
        if stages is not None and block.stage not in stages:
            continue
        if only_blocks is not None and (block.stage, j) not in only_blocks:
            continue
        labels = block.pixels[b].cpu().numpy()
        if labels.shape[-2:] != image.shape[:2]:
            raise ValueError(f'save_coc_cluster_maps: image is {image.shape[:2]}, the maps '
                             f'{labels.shape[-2:]}: pass the padded input image')
        colors = palette(block.center_grid[0] * block.center_grid[1])
        panels = [(f'head {h}', overlay(image, labels[h], colors, alpha))
                  for h in (range(labels.shape[0]) if heads is None else heads)]
        # Two short lines: a sheet of one head is one panel wide.
        notes = [f'{block.name}: stage {block.stage} (stride {4 * 2**block.stage})',
                 f'{block.fold}x{block.fold} regions, '
                 f'{block.center_grid[0] // block.fold}x'
                 f'{block.center_grid[1] // block.fold} centers each']
        path = os.path.join(out_dir, f'{prefix}stage{block.stage}_block{j}.png')
        save_png(path, draw_sheet(panels, notes=notes))
        paths.append(path)
    return paths
