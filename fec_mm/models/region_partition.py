"""Cutting feature maps into independently clustered regions (docs/notes/design.md §2 step 2)."""
from typing import Tuple

from torch import Tensor


def map_to_points(x: Tensor, heads: int, fold: int) -> Tuple[Tensor, Tuple[int, ...]]:
    """(B, heads·d, H, W) -> (B·heads·fold², H/fold · W/fold, d).

    Heads own contiguous channel blocks; regions are a ``fold`` × ``fold`` grid
    of equal tiles. Returns the points and the layout ``from_points`` needs.
    """
    B, C, H, W = x.shape
    d = C // heads
    h, w = H // fold, W // fold
    x = x.reshape(B, heads, d, fold, h, fold, w)
    # -> (B, heads, fold_y, fold_x, h, w, d)
    x = x.permute(0, 1, 3, 5, 4, 6, 2).reshape(B * heads * fold * fold, h * w, d)
    return x, (B, heads, d, fold, h, w)


def points_to_map(x: Tensor, layout: Tuple[int, ...]) -> Tensor:
    """Inverse of :func:`map_to_points` for a (R, h·w, d) tensor."""
    B, heads, d, fold, h, w = layout
    x = x.reshape(B, heads, fold, fold, h, w, d).permute(0, 1, 6, 2, 4, 3, 5)
    return x.reshape(B, heads * d, fold * h, fold * w)
