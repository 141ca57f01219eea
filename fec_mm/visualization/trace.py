"""Tracing recorded assignments down to pixels (docs/notes/design.md §5), one gather per stage.

Pixel (y, x) feeds stem token (y // 4, x // 4) of the stage-1 grid (the
4×4 stride-4 embedding); pooling k sends every stage-k token to one token of
stage k+1. Chaining the recorded pooling indices with one ``gather`` per
stage gives, for every stem token, the token of every later stage it feeds:
no loop over clusters or pixels.
"""
from typing import List, Sequence

import torch
from torch import Tensor

from ..models.assignments import AssignmentRecord

STEM_STRIDE = 4


def stage_maps(poolings: Sequence[AssignmentRecord]) -> List[Tensor]:
    """Stage-k token id of every stem token, for k = 0 .. len(poolings).

    Args:
        poolings: The pooling records of one forward pass, first stage first
            (:meth:`AssignmentRecorder.poolings`).

    Returns:
        list[Tensor]: (B, H0, W0) int64 maps on the stem grid; entry k holds
        flat ids on stage k's grid (entry 0 is the identity).
    """
    if not poolings:
        raise ValueError('stage_maps: no pooling records (was the model run inside '
                         'record_assignments, with more than one stage?)')
    first = poolings[0].index
    B, _, H0, W0 = first.shape
    ids = torch.arange(H0 * W0, device=first.device).expand(B, -1)
    maps = [ids.reshape(B, H0, W0)]
    for rec in poolings:
        ids = rec.index.reshape(B, -1).gather(1, ids)
        maps.append(ids.reshape(B, H0, W0))
    return maps


def head_map_on_stem(encoder: AssignmentRecord, stage_map: Tensor) -> Tensor:
    """An encoder's per-head center ids traced to the stem grid.

    Args:
        encoder: Record of a block's mixer at stage k, index (B, heads, Hk, Wk).
        stage_map: ``stage_maps(...)[k]``, (B, H0, W0) ids on stage k's grid.

    Returns:
        Tensor: (B, heads, H0, W0) center ids.
    """
    B, heads, Hk, Wk = encoder.index.shape
    flat = encoder.index.reshape(B, heads, Hk * Wk)
    ids = stage_map.reshape(B, 1, -1).expand(B, heads, -1)
    return flat.gather(2, ids).reshape(B, heads, *stage_map.shape[-2:])


def to_pixels(token_map: Tensor, stride: int = STEM_STRIDE) -> Tensor:
    """Nearest-neighbour expansion of a stem-grid map to pixels (exact: pixel
    (y, x) belongs to token (y // stride, x // stride)). (..., H0, W0) ->
    (..., H0·stride, W0·stride)."""
    return token_map.repeat_interleave(stride, -2).repeat_interleave(stride, -1)
