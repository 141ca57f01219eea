"""Merging the final clusters of an image into K groups, deterministically.

FEC's last stage keeps many small clusters (one per final token); to read
them as segments they can be merged by similarity of a feature of each
cluster. The merge is a coarsening: every original cluster goes to exactly
one group, so merged maps never split what the network grouped.
"""
from typing import Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

MERGE_METHODS = ('kmeans', 'ward')


def _present(labels: Tensor, num_ids: int) -> Tuple[Tensor, Tensor]:
    """Ids that label at least one pixel (ascending) and their pixel counts."""
    if labels.numel() == 0:
        raise ValueError('merge_clusters: empty label map')
    if int(labels.min()) < 0 or int(labels.max()) >= num_ids:
        raise ValueError(f'merge_clusters: labels must be in [0, {num_ids}) (one feature '
                         f'row per id), got [{int(labels.min())}, {int(labels.max())}]')
    counts = torch.bincount(labels.reshape(-1), minlength=num_ids)
    ids = torch.nonzero(counts).squeeze(1)
    return ids, counts[ids]


def _spherical_kmeans(x: Tensor, weights: Tensor, k: int, seed: int,
                      iters: int = 100) -> Tensor:
    """Size-weighted spherical k-means with k-means++ seeding; (n,) groups."""
    gen = torch.Generator().manual_seed(seed)
    x = F.normalize(x.double(), dim=1)
    w = weights.double()
    first = int(torch.multinomial(w / w.sum(), 1, generator=gen))
    centers = [x[first]]
    for _ in range(1, k):
        dist = (1 - x @ torch.stack(centers).T).clamp_min(0).min(1).values
        p = w * dist
        if float(p.sum()) <= 0:  # every point sits on a center already
            p = w * (dist + 1)
        centers.append(x[int(torch.multinomial(p / p.sum(), 1, generator=gen))])
    c = torch.stack(centers)
    assign = (x @ c.T).argmax(1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, assign, x * w[:, None])
        empty = sums.norm(dim=1) == 0
        c = torch.where(empty[:, None], c, F.normalize(sums, dim=1))
        new = (x @ c.T).argmax(1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


def _ward(x: Tensor, k: int) -> Tensor:
    from scipy.cluster.hierarchy import fcluster, linkage
    z = linkage(x.double().numpy(), method='ward')
    return torch.from_numpy(fcluster(z, t=k, criterion='maxclust').astype(np.int64) - 1)


def merge_clusters(labels: Tensor, features: Tensor, k: int, method: str = 'kmeans',
                   seed: int = 0) -> Tensor:
    """Merge the clusters of one label map into at most ``k`` groups.

    Args:
        labels (Tensor): (H, W) int64 cluster id of every pixel/token.
        features (Tensor): (num_ids, C), one feature row per cluster id (only
            the rows of ids present in ``labels`` are used).
        k (int): Number of groups (>= 1). With ``k`` >= the number of
            present clusters every cluster is its own group.
        method (str): 'kmeans' (spherical k-means on the cosine of the
            features, weighted by cluster size, k-means++ seeded by ``seed``)
            or 'ward' (agglomerative Ward linkage on the features).
        seed (int): Seed of the k-means initialisation.

    Returns:
        Tensor: (H, W) int64 group ids in 0 .. min(k, present) - 1, numbered
        by the smallest cluster id they contain (so the result depends only
        on the inputs).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f'merge_clusters: k must be an int >= 1, got {k!r}')
    if method not in MERGE_METHODS:
        raise ValueError(f'merge_clusters: unknown method {method!r}; valid ones are '
                         f'{MERGE_METHODS}')
    if features.dim() != 2:
        raise ValueError(f'merge_clusters: features must be (num_ids, C), got '
                         f'{tuple(features.shape)}')
    labels = labels.cpu().long()
    ids, counts = _present(labels, features.shape[0])
    x = features.detach().cpu()[ids]
    if k >= len(ids):
        groups = torch.arange(len(ids))
    elif method == 'kmeans':
        groups = _spherical_kmeans(x, counts, k, seed)
    else:
        groups = _ward(x, k)
    # Renumber groups by their smallest member id (ids ascend, so by first hit).
    order = torch.full((int(groups.max()) + 1,), -1, dtype=torch.long)
    next_id = 0
    for g in groups.tolist():
        if order[g] < 0:
            order[g] = next_id
            next_id += 1
    lookup = torch.zeros(features.shape[0], dtype=torch.long)
    lookup[ids] = order[groups]
    return lookup[labels]
