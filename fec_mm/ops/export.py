"""Export formulation of the clustering ops: the same maths in standard ONNX ops.

The fused ops are ``torch.library`` custom ops that no exporter translates,
and the reference's ``index_add`` has no faithful export (the legacy exporter
mishandles repeated indices, onnxscript maps ``scatter_reduce(mean)`` to an
overwrite, TensorRT rejects ScatterND with a reduction). While a model is
exported (:func:`is_exporting`), :mod:`fec_mm.ops.cluster_ops` and
:func:`center_pool` switch to the functions below, built only from ops every
runtime has:

- cosine similarity: normalisation + MatMul;
- assignment: ArgMax over the centers (ONNX ArgMax keeps the first maximum by
  default, ``select_last_index=0``: ties to the lowest index, as in
  docs/notes/design.md §2);
- aggregation without scatter: a one-hot (R, M, N) matrix from an Equal of
  the index with a Range, then MatMul with the values, ReduceSum for counts;
- dispatch: GatherElements of each point's cluster aggregate;
- center pooling: ``F.adaptive_avg_pool2d`` as two exact bin-averaging
  matrices (``P_h · X · P_wᵀ``), built from the runtime shape, so any H, W
  the backbone accepts works (exporters and mmdeploy rewrite adaptive
  pooling into a fixed-kernel AveragePool, which is wrong when the map is
  not divisible by the centers per side).

Shapes as in :mod:`fec_mm.ops.reference`.
"""
import sys
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor


def is_exporting() -> bool:
    """True while ``torch.onnx.export`` (TorchScript or dynamo path) traces.

    ``torch.onnx.is_in_onnx_export`` covers both exporters in torch >= 2.5;
    ``torch.onnx`` is only consulted when something imported it already
    (nothing can be exporting otherwise), so ordinary runs pay one dict lookup.
    """
    onnx = sys.modules.get('torch.onnx')
    return onnx is not None and onnx.is_in_onnx_export()


def _normalize(x: Tensor) -> Tensor:
    # x / max(||x||, 1e-12), as F.normalize (the reference's clamp).
    return x / torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(1e-12)


def cosine_matrix_export(centers: Tensor, points: Tensor) -> Tensor:
    """(R, M, N) cosine of every center with every point, as one MatMul."""
    return torch.matmul(_normalize(centers), _normalize(points).transpose(1, 2))


def _one_hot(index: Tensor, num_centers: int, dtype: torch.dtype) -> Tensor:
    """(R, N) int64 -> (R, M, N) with 1 where ``index[r, n] == m``."""
    ids = torch.arange(num_centers, device=index.device)[None, :, None]
    return (index[:, None, :] == ids).to(dtype)


def _aggregate_export(values: Tensor, value_centers: Tensor, one_hot: Tensor) -> Tensor:
    """g_m = (vcenter_m + Σ_{a(n)=m} w_n·v_n) / (1 + Σ_{a(n)=m} w_n) with MatMul, no
    scatter; ``one_hot`` holds the weights w_n (1 for FEC's mean, s_n for CoC)."""
    sums = torch.matmul(one_hot, values)
    counts = one_hot.sum(-1, keepdim=True)
    return (value_centers + sums) / (1.0 + counts)


def _gather_rows(per_center: Tensor, index: Tensor) -> Tensor:
    """Row ``index[r, n]`` of ``per_center[r]``: (R, N, d), one GatherElements."""
    d = per_center.shape[-1]
    return torch.gather(per_center, 1, index[..., None].expand(-1, -1, d))


def _argmax_centers(scores: Tensor) -> Tuple[Tensor, Tensor]:
    """First maximum over the centers (dim 1): index (R, N), score (R, N)."""
    index = scores.argmax(dim=1)
    return index, torch.gather(scores, 1, index[:, None]).squeeze(1)


def cluster_assign_export(points: Tensor, centers: Tensor) -> Tuple[Tensor, Tensor]:
    """Export formulation of :func:`fec_mm.ops.cluster_assign`: (index, cos)."""
    return _argmax_centers(cosine_matrix_export(centers, points))


def cluster_encode_export(points: Tensor, values: Tensor, centers: Tensor,
                          value_centers: Tensor, alpha: Tensor, beta: Tensor,
                          return_assignment: bool = False, aggregation: str = 'mean'):
    """Export formulation of :func:`fec_mm.ops.cluster_encode` (docs/notes/design.md §2, steps 4-7;
    ``aggregation='similarity'``: the one-hot matrix weighted by s, docs/notes/design.md §7)."""
    cos_all = cosine_matrix_export(centers, points)
    scaled = alpha.reshape(()) * cos_all
    index, best = _argmax_centers(scaled)
    sim = torch.sigmoid(beta.reshape(()) + best)
    one_hot = _one_hot(index, centers.shape[1], values.dtype)
    if aggregation == 'similarity':
        one_hot = one_hot * sim[:, None, :].to(values.dtype)
    g = _aggregate_export(values, value_centers, one_hot)
    out = sim[..., None] * _gather_rows(g, index)
    if return_assignment:
        cos = torch.gather(cos_all, 1, index[:, None]).squeeze(1)
        return out, index, cos.detach()
    return out


def cluster_pool_export(points: Tensor, values: Tensor, centers: Tensor,
                        value_centers: Tensor, return_assignment: bool = False):
    """Export formulation of :func:`fec_mm.ops.cluster_pool` (docs/notes/design.md §2).

    With ``return_assignment``: (out, index, cos), as the public op returns.
    """
    index, cos = cluster_assign_export(points.detach(), centers.detach())
    out = _aggregate_export(values, value_centers,
                            _one_hot(index, centers.shape[1], values.dtype))
    if return_assignment:
        return out, index, cos.detach()
    return out


def bin_average_matrix(in_size: Union[int, Tensor], out_size: int,
                       dtype: torch.dtype = torch.float32,
                       device: Union[str, torch.device] = 'cpu') -> Tensor:
    """(out_size, in_size) matrix whose row i averages adaptive pooling's bin i.

    Bin i of ``F.adaptive_avg_pool2d`` covers ``floor(i·L/S) <= j <
    ceil((i+1)·L/S)`` (L = in_size, S = out_size); the bins overlap when L is
    not a multiple of S, which a fixed-kernel pooling cannot express. Built
    from integer tensor ops, so an exported graph computes it from the
    runtime size.
    """
    i = torch.arange(out_size, device=device)[:, None]
    j = torch.arange(in_size, device=device)[None, :]
    start = torch.div(i * in_size, out_size, rounding_mode='floor')
    end = torch.div((i + 1) * in_size + out_size - 1, out_size, rounding_mode='floor')
    inside = (j >= start) & (j < end)
    return inside.to(dtype) / (end - start).to(dtype)


def center_pool(x: Tensor, size: Sequence[int]) -> Tensor:
    """``F.adaptive_avg_pool2d(x, size)`` for (B, C, H, W) maps; while exporting,
    the same average as bin matrices, ``P_h · x · P_wᵀ`` (exact for any H, W).
    """
    if not is_exporting():
        return F.adaptive_avg_pool2d(x, size)
    return center_pool_export(x, size)


def center_pool_export(x: Tensor, size: Sequence[int]) -> Tensor:
    """Bin-averaging form of ``F.adaptive_avg_pool2d(x, size)``: (B, C, S_h, S_w)."""
    H, W = x.shape[-2:]
    p_h = bin_average_matrix(H, size[0], x.dtype, x.device)
    p_w = bin_average_matrix(W, size[1], x.dtype, x.device)
    return torch.matmul(torch.matmul(p_h, x), p_w.transpose(0, 1))
