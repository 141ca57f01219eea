"""cluster_maps: pixel maps are nested partitions equal to a brute-force trace
of the recorded indices, on odd-sized inputs with folds; per-head maps; the
per-stage numbers against loops and hand counts; class contributions sum to
the classifier's logits."""
import numpy as np
import pytest
import torch
from scipy import ndimage

from fec_mm.models import FEC
from fec_mm.visualization.cluster_maps import cluster_maps, pad_to_divisor
from fec_mm.visualization.contributions import (
    class_contributions,
    contribution_map,
    linear_classifier_head,
)
from fec_mm.visualization.stats import count_components, effective_number, stage_stats

TINY = dict(depths=(1, 2, 1, 1), widths=(16, 24, 32, 40), heads=(2, 3, 2, 2), head_dim=8)


def _model(folds=(2, 2, 1, 1), centers=(3, 3, 2, 2)):
    torch.manual_seed(0)
    return FEC(arch=TINY, num_centers=centers, folds=folds, ops_impl='reference').eval()


@pytest.fixture(scope='module')
def traced():
    model = _model()
    torch.manual_seed(1)
    x = torch.randn(2, 3, 70, 101)  # odd, non-square; padded to 96 x 128 (size_divisor 32)
    return model, x, cluster_maps(model, x)


def _chain(pools, token, b):
    """Stage ids of one stem token, by walking the recorded indices."""
    ids = [token]
    for r in pools:
        w_in = r.index.shape[-1]
        token = int(r.index[b, 0, token // w_in, token % w_in])
        ids.append(token)
    return ids


def test_maps_equal_a_brute_force_trace_of_the_records(traced):
    model, x, maps = traced
    assert maps.image_size == (70, 101) and maps.padded_size == (96, 128)
    assert maps.grids == [(24, 32), (12, 16), (6, 8), (3, 4)]
    W0 = maps.grids[0][1]
    for b in range(2):
        for y in range(0, 70, 3):
            for xx in range(0, 101, 5):
                ids = _chain(maps.poolings, (y // 4) * W0 + xx // 4, b)
                assert [int(m[b, y, xx]) for m in maps.pixel_maps] == ids


def test_maps_are_nested_partitions(traced):
    _, _, maps = traced
    for k, m in enumerate(maps.pixel_maps):
        rows, cols = maps.grids[k]
        assert m.shape == (2, 70, 101) and m.dtype == torch.int64
        assert int(m.min()) >= 0 and int(m.max()) < rows * cols
        # One-hot over the clusters: every pixel in exactly one of them.
        onehot = torch.nn.functional.one_hot(m, rows * cols)
        assert torch.equal(onehot.sum(-1), torch.ones_like(m))
    # Each stage-k cluster lies inside one stage-(k+1) cluster.
    for fine, coarse in zip(maps.pixel_maps[:-1], maps.pixel_maps[1:]):
        for b in range(2):
            pairs = torch.unique(torch.stack([fine[b].flatten(), coarse[b].flatten()]), dim=1)
            assert pairs.shape[1] == torch.unique(fine[b]).numel()


def test_padding_is_the_backbones_and_cropped_away(traced):
    model, x, maps = traced
    padded = pad_to_divisor(x, model.size_divisor)
    again = cluster_maps(model, padded, image_size=(70, 101))
    for a, b in zip(maps.pixel_maps, again.pixel_maps):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match='does not fit'):
        cluster_maps(model, x, image_size=(71, 101))


def test_head_maps_equal_a_loop(traced):
    _, _, maps = traced
    on_grid, on_pixels = maps.head_maps(1, 1)
    record = maps.encoder(1, 1)
    assert on_grid.shape == (2, 3, 9, 13)  # ceil(70 / 8), ceil(101 / 8)
    assert on_pixels.shape == (2, 3, 70, 101)
    assert torch.equal(on_grid, record.index[..., :9, :13])
    W1 = maps.grids[1][1]
    for b in range(2):
        for h in range(3):
            for y in range(0, 70, 7):
                for xx in range(0, 101, 6):
                    t = int(maps.pixel_maps[1][b, y, xx])
                    assert int(on_pixels[b, h, y, xx]) == int(record.index[b, h, t // W1, t % W1])
    with pytest.raises(ValueError, match='no block 2 in stage 1: it has blocks 0..1'):
        maps.head_maps(1, 2)
    with pytest.raises(ValueError, match='no stage 4'):
        maps.head_maps(4, 0)


def test_merge_features_are_one_per_final_cluster(traced):
    model, x, maps = traced
    assert maps.merge_features('final').shape == (2, 12, 40)
    assert torch.equal(maps.merge_features('final')[:, 5], maps.final[:, :, 1, 1])
    pooled = maps.merge_features('pooled')
    assert pooled.shape == (2, 12, 40)
    # The clustering branch is the norm of the pooled values.
    norm = model.cluster_poolings[-1].norm
    torch.testing.assert_close(norm(maps.branches[-1].pooled), maps.branches[-1].cluster)
    with pytest.raises(ValueError, match="unknown merge feature 'mean'"):
        maps.merge_features('mean')


@pytest.mark.parametrize('feature', ['pooled', 'final', 'conv_f'])
def test_merged_view_is_a_coarsening_of_the_final_map(traced, feature):
    from fec_mm.visualization.views import ViewOptions, view_layers
    model, x, maps = traced
    layers, report = view_layers(maps, ViewOptions(groups=3, merge_feature=feature), b=1)
    merged = torch.from_numpy(layers['merged_k3'].labels)
    final = maps.final_map[1]
    assert merged.shape == final.shape and 1 <= int(merged.max()) + 1 <= 3
    for i in torch.unique(final):
        assert torch.unique(merged[final == i]).numel() == 1  # never splits a final cluster
    assert report['merge']['feature'] == feature
    assert sum(report['merge']['pixels_per_group']) == 70 * 101
    again, _ = view_layers(maps, ViewOptions(groups=3, merge_feature=feature), b=1)
    assert np.array_equal(again['merged_k3'].labels, layers['merged_k3'].labels)


def test_conv_f_centers_are_the_last_poolings(traced):
    model, x, maps = traced
    pool = model.cluster_poolings[-1]
    seen = {}
    handle = pool.register_forward_hook(lambda m, a, out: seen.update(x=a[0]))
    with torch.no_grad():
        model(pad_to_divisor(x, model.size_divisor))
    handle.remove()
    expected = torch.nn.functional.avg_pool2d(pool.conv_f(seen['x']), 2)
    torch.testing.assert_close(maps.merge_features('conv_f'), expected.flatten(2).transpose(1, 2))


def test_effective_number_and_components_by_hand():
    assert effective_number(torch.tensor([5, 5, 5, 5, 0])) == pytest.approx(4)
    assert effective_number(torch.tensor([7])) == pytest.approx(1)
    p = np.array([0.5, 0.25, 0.25])
    expected = np.exp(-(p * np.log(p)).sum())
    assert effective_number(torch.tensor([2, 1, 1])) == pytest.approx(expected)
    grid = np.array([[0, 0, 1, 1],
                     [2, 0, 1, 0],
                     [2, 2, 1, 0]])  # 0 in 2 pieces (4-connectivity), 1 and 2 in one each
    assert count_components(grid) == 4


def test_stage_stats_against_loops(traced):
    model, x, maps = traced
    stats = stage_stats(maps, b=1)
    assert [s['stage'] for s in stats] == [1, 2, 3]
    for s in stats:
        k = s['stage']
        pixel = maps.pixel_maps[k][1].numpy()
        ids, counts = np.unique(pixel, return_counts=True)
        assert s['non_empty'] == len(ids)
        p = counts / counts.sum()
        assert s['effective'] == pytest.approx(np.exp(-(p * np.log(p)).sum()))
        stem = maps.stem_maps[k][1, :18, :26].numpy()  # ceil(70 / 4), ceil(101 / 4)
        pieces = sum(ndimage.label(stem == i)[1] for i in np.unique(stem))
        assert s['fragmentation'] == pytest.approx(pieces / len(ids))
        stride = 4 * 2**(k - 1)
        rows, cols = -(-70 // stride), -(-101 // stride)
        index = maps.poolings[k - 1].index[1, 0]
        gw = maps.grids[k][1]
        own = [int(index[y, xx]) == (y // 2) * gw + xx // 2
               for y in range(rows) for xx in range(cols)]
        assert s['own_cell_share'] == pytest.approx(sum(own) / len(own))
        r2, c2 = -(-rows // 2), -(-cols // 2)
        assert s['clusters'] == r2 * c2
        br = maps.branches[k - 1]
        a = br.cluster[1, :, :r2, :c2].norm()
        b = br.skip[1, :, :r2, :c2].norm()
        assert s['cluster_branch_share'] == pytest.approx(float(a / (a + b)), rel=1e-5)


def test_branches_sum_to_the_pooling_output(traced):
    model, x, maps = traced
    seen = {}
    handle = model.cluster_poolings[0].register_forward_hook(
        lambda m, a, out: seen.update(out=out))
    with torch.no_grad():
        model(pad_to_divisor(x, model.size_divisor))
    handle.remove()
    br = maps.branches[0]
    torch.testing.assert_close(br.cluster + br.skip, seen['out'])


def test_class_contributions_sum_to_the_logits():
    from mmengine.registry import DefaultScope
    from mmpretrain.registry import MODELS
    torch.manual_seed(0)
    with DefaultScope.overwrite_default_scope('mmpretrain'):  # other tests set another
        model = MODELS.build(dict(
            type='ImageClassifier',
            backbone=dict(type='FEC', arch=TINY, num_centers=(3, 3, 2, 2), out_indices=(3,),
                          ops_impl='reference'),
            neck=dict(type='GlobalAveragePooling'),
            head=dict(type='LinearClsHead', num_classes=5, in_channels=40))).eval()
    fc = linear_classifier_head(model)
    assert fc is model.head.fc
    with torch.no_grad():
        fc.bias.normal_()  # a non-zero bias is shared among the clusters
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        logits = model(x, mode='tensor')
        maps = cluster_maps(model.backbone, x)
        contributions = class_contributions(maps.final, fc)
    assert contributions.shape == (2, 5, 2 * 3)
    torch.testing.assert_close(contributions.sum(-1), logits, rtol=1e-5, atol=1e-6)
    # Cluster i's share, by hand, and its trace to pixels.
    f = maps.final[1, :, 1, 2]
    torch.testing.assert_close(contributions[1, 3, 5], (fc.weight[3] @ f + fc.bias[3]) / 6)
    pixels = contribution_map(contributions, maps.final_map, 3)
    assert pixels.shape == (2, 64, 96)
    ids = maps.final_map[0, 40, 70]
    assert float(pixels[0, 40, 70]) == float(contributions[0, 3, ids])
    # Not a linear classifier: no head.
    assert linear_classifier_head(model.backbone) is None
