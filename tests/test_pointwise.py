"""The clustering layers' 1×1 convolutions as products in CPU inference
(``fec_mm.models.pointwise``): the same points and outputs as the plain
layers, and the plain layers wherever something must see them run."""
import pytest
import torch
import torch.nn.functional as F

from fec_mm.models import pointwise
from fec_mm.models.cluster_encoder import ClusterEncoder
from fec_mm.models.cluster_pooling import ClusterPooling
from fec_mm.models.pointwise import conv1x1_to_points, matmul_path, points_to_conv1x1
from fec_mm.models.region_partition import map_to_points, points_to_map


@pytest.fixture
def small_blocks(monkeypatch):
    # blocks of 7 points: several per image and a ragged last one
    monkeypatch.setattr(pointwise, 'BLOCK', 7)


@pytest.mark.parametrize('heads,fold', [(1, 1), (3, 1), (2, 2)])
def test_products_match_the_convolutions(heads, fold, small_blocks):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 6, 8, generator=gen)
    w, b = torch.randn(heads * 4, 5, 1, 1, generator=gen), torch.randn(heads * 4, generator=gen)
    points, layout = conv1x1_to_points(x, w, b, heads, fold)
    ref_points, ref_layout = map_to_points(F.conv2d(x, w, b), heads, fold)
    assert layout == ref_layout and points.is_contiguous()
    torch.testing.assert_close(points, ref_points, rtol=1e-5, atol=1e-5)
    wp, bp = torch.randn(7, heads * 4, 1, 1, generator=gen), torch.randn(7, generator=gen)
    out = points_to_conv1x1(points, layout, wp, bp)
    torch.testing.assert_close(out, F.conv2d(points_to_map(points, layout), wp, bp),
                               rtol=1e-5, atol=1e-5)


def _encoder_and_pooling():
    torch.manual_seed(0)
    return (ClusterEncoder(8, 2, 4, num_centers=2, fold=2),
            ClusterPooling(8, 12, fold=2, norm_cfg=dict(type='GN', num_groups=1)))


def test_inference_takes_the_products_and_matches_the_layers(monkeypatch):
    x = torch.randn(2, 8, 8, 12)
    for layer in _encoder_and_pooling():
        assert not matmul_path((x,), layer)  # parameters require grad
        with torch.no_grad():
            assert matmul_path((x,), layer)
            out = layer(x)
            monkeypatch.setattr(type(layer).__module__ + '.matmul_path', lambda *a: False)
            ref = layer(x)
            monkeypatch.undo()
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_layers_run_where_something_must_see_them():
    encoder, pooling = _encoder_and_pooling()
    x = torch.randn(1, 8, 8, 8)
    with torch.no_grad():
        seen = []
        handle = pooling.conv_f.register_forward_hook(lambda m, i, o: seen.append(o.shape))
        assert not matmul_path((x,), pooling, pooling.conv_f, pooling.conv_v)
        pooling(x)
        handle.remove()
        assert seen == [torch.Size([1, 12, 8, 8])]
        assert matmul_path((x,), pooling, pooling.conv_f, pooling.conv_v)
        # a layer scale that trains keeps the mixer on the layers
    assert not matmul_path((x, torch.ones(8, requires_grad=True)), encoder.requires_grad_(False))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not matmul_path((x,), encoder.requires_grad_(False))
