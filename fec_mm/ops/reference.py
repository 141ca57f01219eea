"""Readable PyTorch reference of the clustering steps (docs/notes/design.md §2).

These functions are the test oracle and the fallback of every fused kernel.
They keep the maths in plain tensor operations, but never build a tensor of
size M×N×d: dispatch is a gather and aggregation an index-add, so their memory
is O(M·N) for the similarity matrix plus O(N·d).

Shapes (tensors flattened over batch·heads·regions = R):
    points        (R, N, d)  features the similarity is computed on
    values        (R, N, d)  features that are aggregated
    centers       (R, M, d)  pooled ``points``
    value_centers (R, M, d)  pooled ``values``
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor


def cosine_similarity_matrix(centers: Tensor, points: Tensor) -> Tensor:
    """Cosine similarity of every center with every point.

    Normalisation clamps norms at 1e-12 (as ``F.normalize``), so a zero
    vector has similarity 0 with everything.

    Returns:
        Tensor: (R, M, N).
    """
    return torch.bmm(F.normalize(centers, dim=-1),
                     F.normalize(points, dim=-1).transpose(1, 2))


def _aggregate(values: Tensor, value_centers: Tensor, index: Tensor,
               weight: Optional[Tensor] = None) -> Tensor:
    """g_m = (vcenter_m + Σ_{a(n)=m} w_n·v_n) / (1 + Σ_{a(n)=m} w_n).

    ``weight`` None: w_n = 1, FEC's mean (docs/notes/design.md §2 step 6); the similarities
    s_n (R, N): Context Clusters' weighted center update (docs/notes/design.md §7).

    Returns:
        Tensor: (R, M, d).
    """
    R, N, d = values.shape
    M = value_centers.shape[1]
    # Flatten (region, center) so that one index_add covers all regions.
    flat_index = (index + torch.arange(R, device=index.device)[:, None] * M).reshape(-1)
    w = values.new_ones(R, N) if weight is None else weight
    sums = values.new_zeros(R * M, d).index_add(
        0, flat_index, (values * w[..., None]).reshape(R * N, d))
    counts = values.new_zeros(R * M).index_add(0, flat_index, w.reshape(-1).to(values.dtype))
    return (value_centers + sums.view(R, M, d)) / (1.0 + counts.view(R, M, 1))


def _gather_centers(per_center: Tensor, index: Tensor) -> Tensor:
    """Row ``index[r, n]`` of ``per_center[r]`` for every point: (R, N, d)."""
    R, M, d = per_center.shape
    flat_index = (index + torch.arange(R, device=index.device)[:, None] * M).reshape(-1)
    return per_center.reshape(R * M, d).index_select(0, flat_index).view(*index.shape, d)


def cluster_assign_reference(points: Tensor, centers: Tensor) -> Tuple[Tensor, Tensor]:
    """Assign each point to the center of highest cosine similarity.

    Args:
        points (Tensor): (R, N, d).
        centers (Tensor): (R, M, d).

    Returns:
        tuple[Tensor, Tensor]: ``index`` (R, N) int64, ties to the lowest
        center index, and ``cos`` (R, N), the similarity to that center.
    """
    cos = cosine_similarity_matrix(centers, points)
    index = cos.argmax(dim=1)
    return index, cos.gather(1, index[:, None]).squeeze(1)


def chosen_cosine(points: Tensor, centers: Tensor, index: Tensor) -> Tensor:
    """Cosine similarity of each point with its assigned center: (R, N).

    O(N·d): one gather, no similarity matrix; used to report the similarity
    of an assignment that an op already made (it does not choose anything).
    """
    chosen = _gather_centers(F.normalize(centers, dim=-1), index)
    return (F.normalize(points, dim=-1) * chosen).sum(-1)


def cluster_encode_reference(points: Tensor, values: Tensor, centers: Tensor,
                             value_centers: Tensor, alpha: Tensor,
                             beta: Tensor, return_assignment: bool = False,
                             aggregation: str = 'mean'):
    """Clustering-based feature encoding, steps 4-7 of the mixer (docs/notes/design.md §2).

    s[m, n] = sigmoid(β + α·cos(center_m, f_n)); a(n) = argmax_m s[m, n];
    out_n = s[a(n), n] · g_{a(n)}, with g the plain mean of FEC
    (``aggregation='mean'``) or Context Clusters' similarity-weighted one
    (``'similarity'``, docs/notes/design.md §7; ``_aggregate``). Because
    sigmoid is increasing, the argmax of s is the argmax of α·cos, which is
    what is computed (ties to the lowest index, also when α = 0 makes every s
    equal).

    Args:
        points, values (Tensor): (R, N, d).
        centers, value_centers (Tensor): (R, M, d).
        alpha, beta (Tensor): learnable scalars, shape (1,) or ().
        return_assignment (bool): Also return the index (R, N) the
            aggregation used and the cosine (R, N) to the chosen center.
        aggregation (str): 'mean' (FEC) or 'similarity' (Context Clusters).

    Returns:
        Tensor: (R, N, d), or (out, index, cos) with ``return_assignment``.
    """
    cos_all = cosine_similarity_matrix(centers, points)
    scaled = alpha * cos_all
    index = scaled.argmax(dim=1)
    sim = torch.sigmoid(beta + scaled.gather(1, index[:, None]).squeeze(1))
    g = _aggregate(values, value_centers, index,
                   sim.to(values.dtype) if aggregation == 'similarity' else None)
    out = sim[..., None] * _gather_centers(g, index)
    if return_assignment:
        return out, index, cos_all.gather(1, index[:, None]).squeeze(1).detach()
    return out


def cluster_pool_reference(points: Tensor, values: Tensor, centers: Tensor,
                           value_centers: Tensor, return_assignment: bool = False):
    """Clustering-based feature pooling (docs/notes/design.md §2, cluster pooling).

    Points join the center of highest plain cosine similarity; each center's
    representative is (vcenter_m + Σ v_n) / (1 + count). ``points`` and
    ``centers`` only pick the assignment, so they receive no gradient.

    Returns:
        Tensor: (R, M, d), or (out, index (R, N)) with ``return_assignment``.
    """
    with torch.no_grad():
        index, _ = cluster_assign_reference(points, centers)
    out = _aggregate(values, value_centers, index)
    return (out, index) if return_assignment else out
