"""Cluster maps of one forward pass of an FEC backbone (docs/notes/design.md §5).

:func:`cluster_maps` pads the images to the backbone's ``size_divisor``,
runs the backbone once under ``torch.no_grad`` inside
:func:`~fec_mm.models.record_assignments`, traces every pooling stage down to
pixels (:mod:`.trace`, one gather per stage) and crops the padding away.
Besides the maps it keeps what the views and numbers need: each pooling's
two branches (the clustering branch after its norm and the skip
convolution), the pooled values, the centers of the last pooling's
``conv_f`` and the backbone's last output.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..models.assignments import AssignmentRecord, record_assignments
from ..models.fec import pad_to_divisor
from .trace import STEM_STRIDE, head_map_on_stem, stage_maps, to_pixels

MERGE_FEATURES = ('pooled', 'final', 'conv_f')


def stage_stride(stage: int) -> int:
    """Pixels per token side on stage ``stage``'s grid (4, 8, 16, 32)."""
    return STEM_STRIDE * 2**stage


def valid_grid(image_size: Tuple[int, int], stage: int) -> Tuple[int, int]:
    """Rows and columns of stage ``stage``'s tokens that hold a real pixel
    (the others only see the padding)."""
    s = stage_stride(stage)
    return -(-image_size[0] // s), -(-image_size[1] // s)


@dataclass
class PoolingBranches:
    """The two summands of one pooling's output, ``conv_skip(x) + norm(g)``.

    Attributes:
        pooled (Tensor): (B, C, h, w) the representatives ``g`` (docs/notes/design.md §2,
            before the norm); token ``r·w + c`` is cluster ``r·w + c``.
        cluster (Tensor): (B, C, h, w) the clustering branch ``norm(g)``.
        skip (Tensor): (B, C, h, w) the skip convolution's output.
        conv_f_centers (Tensor): (B, C, h, w) the centers the assignment
            compared with: ``conv_f`` of the input, 2×2-average pooled.
    """
    pooled: Tensor
    cluster: Tensor
    skip: Tensor
    conv_f_centers: Tensor


@dataclass
class ClusterMaps:
    """The cluster maps of a batch; see :func:`cluster_maps`.

    Attributes:
        image_size (tuple[int, int]): (H, W) of the images, before padding.
        padded_size (tuple[int, int]): (Hp, Wp) the backbone ran on.
        stem_maps (list[Tensor]): entry k (k = 0 .. stages-1): (B, H0, W0)
            ids on stage k's (padded) grid of every stem token of the padded
            input (:func:`.trace.stage_maps`).
        pixel_maps (list[Tensor]): entry k: (B, H, W) the same ids for every
            pixel of the image (padding cropped away).
        grids (list[tuple[int, int]]): (rows, cols) of stage k's padded
            grid; ids are ``row · cols + col``.
        poolings (list[AssignmentRecord]): the pooling records, into stage
            1 first.
        encoders (dict[str, AssignmentRecord]): mixer records by block name
            (``'stages.{k}.{j}'``).
        branches (list[PoolingBranches]): per pooling, into stage 1 first.
        final (Tensor): (B, C, h, w) the backbone's last output (the normed
            map of the last stage); token ``i`` is final cluster ``i``.
    """
    image_size: Tuple[int, int]
    padded_size: Tuple[int, int]
    stem_maps: List[Tensor]
    pixel_maps: List[Tensor]
    grids: List[Tuple[int, int]]
    poolings: List[AssignmentRecord]
    encoders: Dict[str, AssignmentRecord]
    branches: List[PoolingBranches]
    final: Tensor
    depths: Tuple[int, ...] = field(default=())

    @property
    def num_stages(self) -> int:
        return len(self.stem_maps)

    @property
    def final_map(self) -> Tensor:
        """(B, H, W) final-cluster id of every pixel."""
        return self.pixel_maps[-1]

    def encoder(self, stage: int, block: int) -> AssignmentRecord:
        """The mixer record of block ``block`` of stage ``stage``.

        Raises:
            ValueError: No such block (names the valid ones).
        """
        if not 0 <= stage < self.num_stages:
            raise ValueError(f'no stage {stage}: this backbone ran stages 0..'
                             f'{self.num_stages - 1}')
        record = self.encoders.get(f'stages.{stage}.{block}')
        if record is None:
            raise ValueError(f'no block {block} in stage {stage}: it has blocks '
                             f'0..{self.depths[stage] - 1}')
        return record

    def head_maps(self, stage: int, block: int) -> Tuple[Tensor, Tensor]:
        """Per-head center ids of one block's mixer.

        Returns:
            tuple[Tensor, Tensor]: on the stage grid, (B, heads, h, w), the
            valid tokens only; and traced to pixels, (B, heads, H, W). Ids
            are cells of the block's (fold·nc) × (fold·nc) center grid.
        """
        record = self.encoder(stage, block)
        rows, cols = valid_grid(self.image_size, stage)
        on_grid = record.index[..., :rows, :cols]
        on_stem = head_map_on_stem(record, self.stem_maps[stage])
        return on_grid, self._crop(to_pixels(on_stem))

    def merge_features(self, kind: str) -> Tensor:
        """(B, num_final_clusters, C): one feature per final cluster, to merge
        them by: ``'pooled'`` the last pooling's representatives, ``'final'``
        the backbone's last output, ``'conv_f'`` the last pooling's centers
        in the never-trained ``conv_f`` space (the authors' choice)."""
        if kind not in MERGE_FEATURES:
            raise ValueError(f'unknown merge feature {kind!r}; valid ones are {MERGE_FEATURES}')
        if kind == 'final':
            x = self.final
        elif kind == 'pooled':
            x = self.branches[-1].pooled
        else:
            x = self.branches[-1].conv_f_centers
        return x.flatten(2).transpose(1, 2)

    def _crop(self, x: Tensor) -> Tensor:
        return x[..., :self.image_size[0], :self.image_size[1]]


def _as_batch(images: Tensor) -> Tensor:
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise ValueError(f'cluster_maps: expected an image (C, H, W) or a batch (B, C, H, W), '
                         f'got shape {tuple(images.shape)}')
    return images


def cluster_maps(backbone: nn.Module, images: Tensor,
                 image_size: Optional[Sequence[int]] = None) -> ClusterMaps:
    """Trace every pixel through the poolings of one forward pass.

    Args:
        backbone (FEC): The backbone (its mode is left as it is; call
            ``eval()`` first for inference behaviour).
        images (Tensor): (C, H, W) or (B, C, H, W), normalised as the model
            expects (e.g. the output of the model's data preprocessor). Any
            size: it is padded with zeros to ``backbone.size_divisor``.
        image_size (Sequence[int], optional): (H, W) of the real content
            when ``images`` is padded already (a data preprocessor pads to
            its own divisor); maps are cropped to it. Default: the input's.

    Returns:
        ClusterMaps: maps, records and branch outputs, on the input's device.
    """
    images = _as_batch(images)
    H, W = images.shape[-2:]
    size = (int(image_size[0]), int(image_size[1])) if image_size is not None else (H, W)
    if not (0 < size[0] <= H and 0 < size[1] <= W):
        raise ValueError(f'cluster_maps: image_size {size} does not fit the input {H}x{W}')
    divisor = getattr(backbone, 'size_divisor', None)
    if divisor is None:
        raise ValueError(f'cluster_maps: {type(backbone).__name__} is not an FEC backbone '
                         '(no size_divisor)')
    padded = pad_to_divisor(images, divisor)
    captured: Dict[int, Dict[str, Tensor]] = {}
    handles = []
    poolings = list(getattr(backbone, 'cluster_poolings', []))
    for i, pool in enumerate(poolings):
        slot = captured.setdefault(i, {})

        def keep(name, slot=slot, grab_input=False):
            def hook(module, args, out):
                slot[name] = out
                if grab_input:
                    slot['pooled'] = args[0]
            return hook
        handles += [pool.norm.register_forward_hook(keep('cluster', grab_input=True)),
                    pool.conv_skip.register_forward_hook(keep('skip')),
                    pool.conv_f.register_forward_hook(keep('conv_f'))]
    try:
        with torch.no_grad(), record_assignments(backbone) as rec:
            outs = backbone(padded)
    finally:
        for h in handles:
            h.remove()
    pools = rec.poolings()
    if not pools:
        raise ValueError('cluster_maps: the backbone ran a single stage, so no pooling to trace')
    stem = stage_maps(pools)
    pixel = [to_pixels(m)[..., :size[0], :size[1]] for m in stem]
    grids = [tuple(pools[0].index.shape[-2:])] + [p.center_grid for p in pools]
    branches = [PoolingBranches(pooled=captured[i]['pooled'], cluster=captured[i]['cluster'],
                                skip=captured[i]['skip'],
                                conv_f_centers=F.avg_pool2d(captured[i]['conv_f'], 2))
                for i in range(len(pools))]
    encoders = {r.name[:-len('.token_mixer')]: r for r in rec.encoders()
                if r.name.endswith('.token_mixer')}
    depths = tuple(len(s) for s in getattr(backbone, 'stages', []))
    return ClusterMaps(image_size=size, padded_size=tuple(padded.shape[-2:]), stem_maps=stem,
                       pixel_maps=pixel, grids=grids, poolings=pools, encoders=encoders,
                       branches=branches, final=outs[-1], depths=depths)
