"""The assignment recorder is faithful: re-aggregating each layer's values with
the recorded global indices reproduces the layer's output, for every impl
(Triton's on a GPU, or on CPU under its interpreter: ``TRITON_INTERPRET=1``
must be set before Triton is imported, so ``test_triton_under_the_interpreter``
re-runs the check in a fresh interpreter, as tests/test_ops_triton.py does)."""
import importlib.util
import os

import pytest
import torch
import torch.nn.functional as F
from triton_interpreter import rerun_under_interpreter

from fec_mm.models import FEC, record_assignments
from fec_mm.models.cluster_encoder import ClusterEncoder
from fec_mm.models.cluster_pooling import ClusterPooling
from fec_mm.ops import cpu
from fec_mm.visualization import head_map_on_stem, stage_maps, to_pixels

INTERPRET = os.environ.get('TRITON_INTERPRET') == '1'
HAS_TRITON = importlib.util.find_spec('triton') is not None
RUN_TRITON = HAS_TRITON and (INTERPRET or torch.cuda.is_available())
IMPLS = (['reference'] + (['cpu'] if cpu.is_available() else [])
         + (['triton'] if RUN_TRITON else []))
TINY = dict(depths=(1, 1, 1, 1), widths=(16, 24, 32, 40), heads=(2, 2, 2, 2), head_dim=8)


def _model(impl, folds=(2, 2, 1, 1), centers=(3, 3, 2, 2)):
    torch.manual_seed(0)
    return FEC(arch=TINY, num_centers=centers, folds=folds, ops_impl=impl).eval()


def _capture(model):
    """Inputs and outputs of every clustering layer, by module."""
    seen = {}

    def hook(module, args, kwargs, out):
        seen[module] = (args[0], kwargs.get('scale'), out)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules()
               if isinstance(m, (ClusterEncoder, ClusterPooling))]
    return seen, handles


def _scatter_mean(values, base, index, num):
    """(base_m + Σ_{index=m} v) / (1 + count_m) over flat ids: values (B, d, N)."""
    B, d, _ = values.shape
    sums = base.clone().scatter_add_(2, index[:, None].expand(B, d, -1), values)
    ones = torch.ones(B, 1, index.shape[1], device=values.device)
    counts = torch.ones(B, 1, num, device=values.device).scatter_add_(2, index[:, None], ones)
    return sums / counts


def _region_pool(x, fold, size):
    """Adaptive pooling of each of fold×fold tiles into a size×size grid, laid
    out as one (fold·size)² grid: (B, C, H, W) -> (B, C, fold·size, fold·size)."""
    B, C, H, W = x.shape
    h, w = H // fold, W // fold
    tiles = x.reshape(B, C, fold, h, fold, w).permute(0, 2, 4, 1, 3, 5).reshape(-1, C, h, w)
    pooled = F.adaptive_avg_pool2d(tiles, size)
    pooled = pooled.reshape(B, fold, fold, C, size, size).permute(0, 3, 1, 4, 2, 5)
    return pooled.reshape(B, C, fold * size, fold * size)


@pytest.mark.skipif(not HAS_TRITON or INTERPRET or torch.cuda.is_available(),
                    reason='triton runs in-process (GPU), is missing, or this is the re-run')
def test_triton_under_the_interpreter():
    summary = rerun_under_interpreter(
        __file__, 'test_recorded_indices_reproduce_every_layer and triton')
    assert '1 passed' in summary and 'skipped' not in summary, summary


@pytest.mark.parametrize('impl', IMPLS)
def test_recorded_indices_reproduce_every_layer(impl):
    model = _model(impl)
    device = 'cuda' if impl == 'triton' and torch.cuda.is_available() else 'cpu'
    model.to(device)
    x = torch.randn(2, 3, 128, 192, device=device)  # non-square; folds 2 at stages 0-1
    seen, handles = _capture(model)
    with torch.no_grad(), record_assignments(model) as rec:
        model(x)
    for h in handles:
        h.remove()
    by_name = rec.by_name
    names = dict(model.named_modules())
    assert len(by_name) == 4 + 3  # one mixer per stage, three poolings
    for name, r in by_name.items():
        module = names[name]
        inp, scale, out = seen[module]
        B, _, H, W = inp.shape
        assert r.index.dtype == torch.int64
        assert int(r.index.min()) >= 0 and int(r.index.max()) < r.num_centers
        if r.kind == 'pool':
            assert r.index.shape == (B, 1, H, W) and r.center_grid == (H // 2, W // 2)
            v = module.conv_v(inp)
            base = F.avg_pool2d(v, 2).flatten(2)
            g = _scatter_mean(v.flatten(2), base, r.index.reshape(B, -1), r.num_centers)
            again = module.conv_skip(inp) + module.norm(g.reshape(B, -1, H // 2, W // 2))
        else:
            heads, nc = module.heads, module.num_centers
            v = module.v(inp)
            d = v.shape[1] // heads
            vh = v.reshape(B * heads, d, H, W)
            base = _region_pool(vh, r.fold, nc).flatten(2)
            idx = r.index.reshape(B * heads, -1)
            g = _scatter_mean(vh.flatten(2), base, idx, r.num_centers)
            cos = r.cos.reshape(B * heads, 1, -1)
            sim = torch.sigmoid(module.sim_beta + module.sim_alpha * cos)
            mixed = (sim * g.gather(2, idx[:, None].expand(-1, d, -1))).reshape(B, -1, H, W)
            w, b = module.proj.weight, module.proj.bias
            again = F.conv2d(mixed, w * scale[:, None, None, None], b * scale)
        torch.testing.assert_close(again, out, rtol=1e-4, atol=1e-5, msg=name)


def test_recorder_is_off_by_default_and_restored():
    model = _model('reference')
    layers = [m for m in model.modules() if isinstance(m, (ClusterEncoder, ClusterPooling))]
    assert all(m.recorder is None for m in layers)
    with record_assignments(model) as rec:
        model(torch.randn(1, 3, 64, 64))
    assert all(m.recorder is None for m in layers)
    assert len(rec.records) == 7
    with pytest.raises(ValueError, match='holds no FEC clustering layer'):
        with record_assignments(torch.nn.Conv2d(3, 3, 1)):
            pass


def test_vectorised_trace_equals_a_loop():
    model = _model('reference')
    x = torch.randn(1, 3, 64, 128)
    with torch.no_grad(), record_assignments(model) as rec:
        model(x)
    pools = rec.poolings()
    maps = stage_maps(pools)
    H0, W0 = 16, 32
    for y in range(H0):
        for xx in range(W0):
            tok = y * W0 + xx
            for k, r in enumerate(pools, start=1):
                w_in = r.index.shape[-1]
                tok = int(r.index[0, 0, tok // w_in, tok % w_in])
                assert int(maps[k][0, y, xx]) == tok
    # Every stage map is a partition of the stem grid into ids of that stage.
    for k, m in enumerate(maps[1:], start=1):
        grid = pools[k - 1].num_centers
        assert int(m.min()) >= 0 and int(m.max()) < grid
    enc = rec.encoders()[-1]  # stage 3 mixer
    heads_map = head_map_on_stem(enc, maps[3])
    y, xx = 5, 17
    t = int(maps[3][0, y, xx])
    w3 = enc.index.shape[-1]
    assert int(heads_map[0, 1, y, xx]) == int(enc.index[0, 1, t // w3, t % w3])
    pix = to_pixels(maps[3])
    assert pix.shape == (1, 64, 128) and int(pix[0, 4 * y + 3, 4 * xx]) == t
