"""The 1×1 convolutions of the clustering layers as matrix products, straight
into and out of the point layout of :mod:`fec_mm.models.region_partition`.

On CPU, PyTorch sends 1×1 stride-1 convolutions at batch 1 to its slow
im2col path (``_slow_conv2d_forward``), and the clustering ops then copy the
permuted conv output into their (R, N, d) point layout. In inference the
products below write each head's (N, d) block of points directly, and the
output projection reads the (N, d) blocks back (one ``addmm`` per head), so
neither the conv's map nor its permuted copy exists. Same weights, same maths;
the sums run in another order, so results agree to float rounding.
"""
from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.modules.module as nn_module
from torch import Tensor

from ..ops.export import is_exporting
from .region_partition import map_to_points


def _has_hooks(module: nn.Module) -> bool:
    return bool(module._forward_hooks or module._forward_pre_hooks
                or nn_module._global_forward_hooks or nn_module._global_forward_pre_hooks)


def matmul_path(inputs: Sequence[Optional[Tensor]], layer: nn.Module, *convs: nn.Module) -> bool:
    """Whether the clustering ``layer`` may run its 1×1 ``convs`` as the
    products of this module rather than as modules: a CPU inference call (no
    gradient recorded for ``inputs`` or any parameter of ``layer``) outside
    autocast, export, tracing and ``torch.compile``, with no hook on the convs
    (hooks, e.g. the cluster maps' ``conv_f`` recorder, see them run)."""
    tensors = [t for t in inputs if t is not None]
    if any(t.device.type != 'cpu' for t in tensors) or torch.is_autocast_enabled('cpu'):
        return False
    if torch.is_grad_enabled() and any(
            t.requires_grad for t in [*tensors, *layer.parameters()]):
        return False
    if (is_exporting() or torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch.jit.is_scripting()):
        return False
    return not any(_has_hooks(conv) for conv in convs)


# Points per product: one block's (points, h·d) result stays in cache while it
# is split into the heads' (points, d) blocks (products as wide as h·d are
# faster than one per head; the split is a cache-resident copy).
BLOCK = 1024


@torch.no_grad()
def conv1x1_to_points(x: Tensor, weight: Tensor, bias: Tensor, heads: int,
                      fold: int) -> Tuple[Tensor, Tuple[int, ...]]:
    """``map_to_points(F.conv2d(x, weight, bias), heads, fold)`` as products.

    Args:
        x (Tensor): (B, C, H, W), H and W divisible by ``fold``.
        weight (Tensor): (heads·d, C, 1, 1). bias (Tensor): (heads·d,).

    Returns:
        tuple: points (B·heads·fold², H/fold · W/fold, d), contiguous, and the
        layout of :func:`~fec_mm.models.region_partition.map_to_points`.
    """
    B, C, H, W = x.shape
    N, d = H * W, weight.shape[0] // heads
    xs = x.reshape(B, C, N)
    wt = weight.reshape(-1, C).t()
    out = x.new_empty(B, heads, N, d)
    for i in range(B):
        for s in range(0, N, BLOCK):
            e = min(s + BLOCK, N)
            if heads == 1:
                torch.addmm(bias, xs[i, :, s:e].t(), wt, out=out[i, 0, s:e])
            else:
                block = torch.addmm(bias, xs[i, :, s:e].t(), wt)
                out[i, :, s:e].copy_(block.view(e - s, heads, d).transpose(0, 1))
    h, w = H // fold, W // fold
    # A view for fold 1; for folds, one copy into the regions' order.
    points = out.view(B, heads, fold, h, fold, w, d).permute(0, 1, 2, 4, 3, 5, 6)
    return points.reshape(B * heads * fold * fold, h * w, d), (B, heads, d, fold, h, w)


def conv_to_points(x: Tensor, conv: nn.Conv2d, heads: int, fold: int,
                   matmuls: bool) -> Tuple[Tensor, Tuple[int, ...]]:
    """``map_to_points(conv(x), heads, fold)``; with ``matmuls`` (a call for
    which :func:`matmul_path` holds), computed by :func:`conv1x1_to_points`."""
    if matmuls:
        return conv1x1_to_points(x, conv.weight, conv.bias, heads, fold)
    return map_to_points(conv(x), heads, fold)


@torch.no_grad()
def points_to_conv1x1(points: Tensor, layout: Tuple[int, ...], weight: Tensor,
                      bias: Tensor) -> Tensor:
    """``F.conv2d(points_to_map(points, layout), weight, bias)`` as products.

    Args:
        points (Tensor): (B·heads·fold², h·w, d) in the layout of
            :func:`~fec_mm.models.region_partition.map_to_points`.
        weight (Tensor): (C_out, heads·d, 1, 1). bias (Tensor): (C_out,).

    Returns:
        Tensor: (B, C_out, fold·h, fold·w), contiguous.
    """
    B, heads, d, fold, h, w = layout
    H, W = fold * h, fold * w
    N = H * W
    # A view for fold 1; for folds, one copy back into the map's order.
    blocks = points.reshape(B, heads, fold, fold, h, w, d).permute(0, 1, 2, 4, 3, 5, 6)
    blocks = blocks.reshape(B, heads, N, d)
    w2 = weight.reshape(weight.shape[0], heads * d)
    out = points.new_empty(B, weight.shape[0], N)
    for i in range(B):
        for s in range(0, N, BLOCK):
            e = min(s + BLOCK, N)
            # the block's (points, h·d) matrix, heads side by side (in cache)
            block = blocks[i, :, s:e].transpose(0, 1).reshape(e - s, heads * d)
            torch.addmm(bias[:, None], w2, block.t(), out=out[i, :, s:e])
    return out.view(B, -1, H, W)
