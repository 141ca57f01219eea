"""Merging final clusters into K groups: a deterministic coarsening that finds
well-separated groups with either method."""
import pytest
import torch

from fec_mm.visualization.merge import merge_clusters


def _three_blobs(seed=0):
    """12 clusters on a 6x8 map whose features form 3 tight, distinct directions."""
    g = torch.Generator().manual_seed(seed)
    truth = torch.tensor([0, 0, 1, 2, 1, 0, 2, 2, 1, 0, 1, 2])
    dirs = torch.eye(3, 16) * 5
    feats = dirs[truth] + 0.05 * torch.randn(12, 16, generator=g)
    labels = torch.arange(48).reshape(6, 8) % 12
    return labels, feats, truth


def _same_partition(a, b):
    pairs = set(zip(a.reshape(-1).tolist(), b.reshape(-1).tolist()))
    return len(pairs) == len(set(a.reshape(-1).tolist())) == len(set(b.reshape(-1).tolist()))


@pytest.mark.parametrize('method', ['kmeans', 'ward'])
def test_merge_recovers_separated_groups(method):
    labels, feats, truth = _three_blobs()
    merged = merge_clusters(labels, feats, 3, method=method)
    assert _same_partition(merged, truth[labels])
    # Numbered by the smallest member id: cluster 0 is in group 0, cluster 2 in group 1.
    assert int(merged[0, 0]) == 0 and int(merged[0, 2]) == 1


@pytest.mark.parametrize('method', ['kmeans', 'ward'])
def test_merge_is_a_deterministic_coarsening(method):
    torch.manual_seed(1)
    labels = torch.randint(0, 30, (20, 24))
    feats = torch.randn(30, 8)
    a = merge_clusters(labels, feats, 5, method=method, seed=3)
    b = merge_clusters(labels, feats, 5, method=method, seed=3)
    assert torch.equal(a, b)
    assert int(a.max()) < 5
    for cid in labels.unique():  # every cluster lies in exactly one group
        assert a[labels == cid].unique().numel() == 1


def test_merge_with_k_at_least_the_clusters_keeps_them():
    labels = torch.tensor([[4, 4, 7], [9, 7, 4]])
    merged = merge_clusters(labels, torch.randn(10, 3), 8)
    assert torch.equal(merged, torch.tensor([[0, 0, 1], [2, 1, 0]]))


def test_merge_rejects_bad_input():
    labels = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match='k must be an int >= 1'):
        merge_clusters(labels, torch.randn(1, 3), 0)
    with pytest.raises(ValueError, match='unknown method'):
        merge_clusters(labels, torch.randn(1, 3), 2, method='spectral')
    with pytest.raises(ValueError, match=r'labels must be in \[0, 1\)'):
        merge_clusters(labels + 1, torch.randn(1, 3), 2)
