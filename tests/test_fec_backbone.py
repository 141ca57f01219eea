"""The FEC backbone: presets, shapes, sizes, freezing, gradients (docs/notes/design.md)."""
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from fec_mm.models import FEC
from fec_mm.models.cluster_encoder import ClusterEncoder
from fec_mm.models.cluster_pooling import ClusterPooling

sys.path.insert(0, osp.join(osp.dirname(__file__), '..', 'tools', 'analysis_tools'))
from count_params import SPEC_PARAMS, count_params  # noqa: E402


@pytest.mark.parametrize('arch', ['small', 'base', 'large'])
def test_param_counts_match_spec(arch):
    assert count_params(arch) == SPEC_PARAMS[arch]


@pytest.mark.parametrize('arch,size,kwargs', [
    ('small', (64, 64), dict(num_centers=(7, 7, 7, 7), folds=(2, 2, 1, 1))),
    ('small', (224, 224), dict()),
    ('small', (96, 160), dict(num_centers=(10, 10, 5, 5))),
    ('base', (128, 64), dict(num_centers=(7, 7, 7, 7), folds=(2, 2, 1, 1))),
    ('large', (64, 96), dict()),
])
def test_dense_outputs_have_widths_and_strides(arch, size, kwargs):
    model = FEC(arch=arch, **kwargs).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, *size))
    assert len(outs) == 4
    for k, out in enumerate(outs):
        stride = 2 ** (k + 2)
        assert out.shape == (1, model.arch['widths'][k], size[0] // stride, size[1] // stride)
        # Each output is GroupNorm(1)-normed (affine at its init: weight 1, bias 0).
        assert out[0].mean().abs() < 1e-4 and (out[0].std(unbiased=False) - 1).abs() < 1e-3


def test_detection_size_and_batch():
    model = FEC(num_centers=7, folds=(2, 2, 1, 1), out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(torch.randn(2, 3, 800, 1344))
    assert [tuple(o.shape) for o in outs] == [(2, 64, 100, 168), (2, 320, 25, 42)]


def test_batch_images_are_independent():
    torch.manual_seed(0)
    model = FEC(num_centers=7, folds=(2, 2, 1, 1)).eval()
    x = torch.randn(3, 3, 128, 96)
    with torch.no_grad():
        batched = model(x)
        alone = model(x[1:2])
    for b, a in zip(batched, alone):
        torch.testing.assert_close(b[1:2], a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('size,folds,divisor', [
    ((225, 224), (1, 1, 1, 1), 32), ((70, 100), (2, 2, 1, 1), 32), ((33, 97), (2, 2, 2, 2), 64)])
@pytest.mark.parametrize('ops_impl', ['reference', 'auto'])
def test_any_size_is_padded_inside_and_cropped(size, folds, divisor, ops_impl):
    """Any H x W: the result is that of the input padded to the size divisor
    (as a data preprocessor pads), cropped to ceil(H / stride) per stage."""
    torch.manual_seed(0)
    model = FEC(folds=folds, ops_impl=ops_impl).eval()
    assert model.size_divisor == divisor
    x = torch.randn(1, 3, *size)
    padded = torch.nn.functional.pad(x, (0, -size[1] % divisor, 0, -size[0] % divisor))
    with torch.no_grad():
        outs, full = model(x), model(padded)
    for k, (out, ref) in enumerate(zip(outs, full)):
        stride = 4 * 2**k
        assert out.shape[2:] == (-(-size[0] // stride), -(-size[1] // stride))
        assert torch.equal(out, ref[..., :out.shape[2], :out.shape[3]])
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        model(torch.randn(1, 4, 64, 64))


def test_bad_arguments_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown arch 'tiny'.*\['base', 'large', 'small'\]"):
        FEC(arch='tiny')
    with pytest.raises(ValueError, match='custom arch misses'):
        FEC(arch=dict(depths=(1, 1, 1, 1)))
    with pytest.raises(ValueError, match='num_centers'):
        FEC(num_centers=(7, 7))
    with pytest.raises(ValueError, match='out_indices'):
        FEC(out_indices=(4,))
    with pytest.raises(ValueError, match='frozen_stages'):
        FEC(frozen_stages=4)
    with pytest.raises(ValueError, match='ops_impl'):
        FEC(ops_impl='cuda')


def test_custom_arch_dict_and_negative_out_indices():
    arch = dict(depths=(1, 1, 1, 1), widths=(16, 32, 48, 64), heads=(2, 2, 4, 4), head_dim=8)
    model = FEC(arch=arch, out_indices=(-1, 1)).eval()
    assert model.out_indices == (1, 3)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64]


def test_only_needed_stages_are_built():
    model = FEC(out_indices=(0, 1))
    assert len(model.stages) == 2 and len(model.cluster_poolings) == 1
    assert not hasattr(model, 'norm2')


def test_gradients_reach_every_trainable_parameter():
    torch.manual_seed(0)
    model = FEC(arch='small', num_centers=(4, 4, 2, 2), drop_path_rate=0.1).train()
    # Larger layer scales so that every branch carries a visible gradient.
    for name, p in model.named_parameters():
        if 'layer_scale' in name:
            nn.init.constant_(p, 0.5)
    # Batch 8: drop path (rate <= 0.1) drops a branch for all 8 samples with
    # probability < 1e-8, which batch 2 did for one block with some seeds.
    sum(o.square().mean() for o in model(torch.randn(8, 3, 64, 64))).backward()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    # Only the pooling similarity convs are frozen: they feed an argmax (docs/notes/design.md §2).
    assert frozen == {f'cluster_poolings.{i}.conv_f.{w}'
                      for i in range(3) for w in ('weight', 'bias')}
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    alpha = model.stages[0][0].token_mixer.sim_alpha
    assert alpha.grad.abs().item() > 0


def test_frozen_stages_stay_frozen_after_train():
    model = FEC(frozen_stages=1)
    model.train()
    for name, p in model.named_parameters():
        frozen = name.startswith(('patch_embed', 'stages.0', 'stages.1', 'cluster_poolings.0',
                                  'norm0', 'norm1'))
        assert p.requires_grad != frozen or 'conv_f' in name, name
    assert not model.stages[1].training and model.stages[2].training


def test_with_cp_gives_the_same_gradients():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for with_cp in (False, True):
        torch.manual_seed(1)
        model = FEC(with_cp=with_cp).train()
        sum(o.sum() for o in model(x)).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad]))
    torch.testing.assert_close(grads[0], grads[1])


def _tiles(x: torch.Tensor) -> list:
    """The four quadrants of a (B, C, H, W) map, row by row."""
    h, w = x.shape[2] // 2, x.shape[3] // 2
    return [x[..., i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(2) for j in range(2)]


@pytest.mark.parametrize('impl', ['reference', 'auto'])
def test_folded_regions_are_clustered_alone(impl):
    """With fold 2 each quadrant is clustered around its own pooled centers:
    the same as running the module without folds on each quadrant. Quadrants
    of 10×14 pixels make the adaptive 3×3 center bins uneven."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 20, 28)
    encoder = ClusterEncoder(16, heads=2, head_dim=8, num_centers=3, fold=2, ops_impl=impl)
    nn.init.constant_(encoder.sim_alpha, 3.0)
    pooling = ClusterPooling(16, 24, fold=2, norm_cfg=dict(type='GN', num_groups=1),
                             ops_impl=impl)
    # The 3×3 skip convolution and the norm see across quadrants: leave them out.
    pooling.norm = nn.Identity()
    nn.init.zeros_(pooling.conv_skip.weight)
    nn.init.zeros_(pooling.conv_skip.bias)
    for module in (encoder, pooling):
        folded = module(x)
        module.fold = 1
        q = [module(t) for t in _tiles(x)]
        alone = torch.cat([torch.cat(q[:2], dim=3), torch.cat(q[2:], dim=3)], dim=2)
        whole = module(x)
        torch.testing.assert_close(folded, alone)
        # Folds do change the result: the centers are per quadrant.
        assert not torch.allclose(folded, whole, atol=1e-3)


def test_position_channels_follow_spec():
    model = FEC()
    stem = model.patch_embed.proj
    nn.init.zeros_(stem.weight)
    nn.init.zeros_(stem.bias)
    with torch.no_grad():
        stem.weight[0, 3] = 1.0  # output channel 0 sums the row channel of each 4×4 patch
        stem.weight[1, 4] = 1.0  # output channel 1 sums the column channel
        out = model.patch_embed(torch.zeros(1, 3, 64, 96))
    rows = torch.arange(64) / 63 - 0.5
    cols = torch.arange(96) / 95 - 0.5
    torch.testing.assert_close(out[0, 0, :, 0], rows.view(16, 4).sum(1) * 4)
    torch.testing.assert_close(out[0, 1, 0, :], cols.view(24, 4).sum(1) * 4)


def test_import_does_not_pull_downstream_libraries():
    code = ('import sys, fec_mm; '
            'print(sorted(m for m in ("mmdet", "mmseg", "mmpretrain") if m in sys.modules))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'
