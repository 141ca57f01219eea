"""The block MLP op ``fec_mm.ops.channel_mlp``: chunked implementation against
the reference, what it saves for backward, and the layer scales folded into
the last weights of the mixer and the MLP."""
import pytest
import torch
import torch.nn as nn

from fec_mm.models.cluster_block import ClusterBlock
from fec_mm.ops import channel_mlp
from fec_mm.ops import mlp as mlp_module


def _inputs(B, C, H, W, hidden, out, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    # weights scaled by 1/sqrt(fan-in) as in a trained layer: outputs of order 1
    shapes = [((B, C, H, W), 1), ((hidden, C), C), ((hidden,), 1), ((out, hidden), hidden),
              ((out,), 1)]
    return [(torch.randn(*s, generator=gen, dtype=dtype) / fan_in**0.5).requires_grad_()
            for s, fan_in in shapes]


@pytest.fixture
def small_blocks(monkeypatch):
    # blocks of 7 pixels: several blocks per image and a ragged last one
    monkeypatch.setattr(mlp_module, 'CPU_BLOCK', 7)


@pytest.mark.parametrize('shape', [(1, 3, 5, 9, 12, 3), (2, 8, 6, 7, 32, 5), (3, 4, 1, 1, 8, 4)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_chunked_matches_reference(shape, dtype, small_blocks):
    inputs = _inputs(*shape, dtype)
    ref = channel_mlp(*inputs, impl='reference')
    out = channel_mlp(*inputs, impl='chunked')
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(out, ref, **tol)
    grad = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ref_grads = torch.autograd.grad(ref, inputs, grad)
    grads = torch.autograd.grad(out, inputs, grad)
    for name, g, r in zip(['x', 'w1', 'b1', 'w2', 'b2'], grads, ref_grads):
        torch.testing.assert_close(g, r, **tol, msg=name)


def test_auto_is_chunked_and_matches_reference():
    inputs = _inputs(2, 6, 40, 33, 24, 6, torch.float32)  # 1320 pixels: two CPU blocks
    torch.testing.assert_close(channel_mlp(*inputs), channel_mlp(*inputs, impl='reference'),
                               rtol=1e-5, atol=1e-5)
    assert type(channel_mlp(*inputs).grad_fn).__name__ == '_ChunkedMlpBackward'


def test_gradcheck_chunked(small_blocks):
    inputs = _inputs(2, 3, 4, 5, 6, 2, torch.float64)
    assert torch.autograd.gradcheck(lambda *a: channel_mlp(*a, impl='chunked'), inputs)


def test_frozen_weights_and_non_contiguous_input(small_blocks):
    x, w1, b1, w2, b2 = _inputs(2, 5, 6, 4, 10, 5, torch.float32)
    for p in (w1, b1, w2, b2):
        p.requires_grad_(False)
    x_cl = x.detach().to(memory_format=torch.channels_last).requires_grad_()
    out = channel_mlp(x_cl, w1, b1, w2, b2, impl='chunked')
    (gx,) = torch.autograd.grad(out.square().sum(), x_cl)
    ref = channel_mlp(x_cl, w1, b1, w2, b2, impl='reference')
    (ref_gx,) = torch.autograd.grad(ref.square().sum(), x_cl)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx, ref_gx, rtol=1e-5, atol=1e-5)


def _saved_bytes(fn, *inputs):
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*inputs)
    return sum(storages.values())


def test_chunked_saves_only_its_input_and_weights():
    inputs = _inputs(1, 16, 32, 32, 128, 16, torch.float32)
    x, w1, b1, w2, _ = inputs
    chunked = _saved_bytes(lambda *a: channel_mlp(*a, impl='chunked'), *inputs)
    reference = _saved_bytes(lambda *a: channel_mlp(*a, impl='reference'), *inputs)
    assert chunked == sum(t.numel() * 4 for t in (x, w1, b1, w2))
    # the reference keeps the two hidden (128-channel) maps as well
    assert reference >= 2 * 128 * 32 * 32 * 4 > 10 * chunked


def test_bad_arguments():
    x, w1, b1, w2, b2 = _inputs(1, 4, 3, 3, 8, 4, torch.float32)
    with pytest.raises(ValueError, match="unknown impl 'cuda'"):
        channel_mlp(x, w1, b1, w2, b2, impl='cuda')
    with pytest.raises(ValueError, match='do not chain'):
        channel_mlp(x, w1.t(), b1, w2, b2)
    with pytest.raises(ValueError, match='do not chain'):
        channel_mlp(x[0], w1, b1, w2, b2)


@pytest.mark.parametrize('ops_impl', ['reference', 'auto'])
def test_layer_scales_act_through_the_last_weights(ops_impl):
    torch.manual_seed(0)
    block = ClusterBlock(8, 2, 4, 4, num_centers=2, fold=1, ops_impl=ops_impl)
    scale = torch.randn(8)
    x = torch.randn(2, 8, 6, 6)
    for module in (block.token_mixer, block.mlp):
        torch.testing.assert_close(module(x, scale=scale), scale[:, None, None] * module(x),
                                   rtol=1e-5, atol=1e-5)


def test_other_activations_use_the_plain_layers():
    torch.manual_seed(0)
    block = ClusterBlock(8, 2, 4, 4, num_centers=2, fold=1,
                         act_cfg=dict(type='GELU', approximate='tanh'))
    mlp = block.mlp
    assert not mlp.fused and isinstance(mlp.act, nn.GELU)
    x = torch.randn(2, 8, 5, 3)
    expected = mlp.fc2(mlp.act(mlp.fc1(x.permute(0, 2, 3, 1)))).permute(0, 3, 1, 2)
    torch.testing.assert_close(mlp(x), expected)
    assert ClusterBlock(8, 2, 4, 4, num_centers=2, fold=1).mlp.fused


def test_autocast_runs_in_the_autocast_dtype(small_blocks):
    inputs = _inputs(2, 6, 5, 4, 16, 6, torch.float32)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = channel_mlp(*inputs, impl='chunked')
        ref = channel_mlp(*inputs, impl='reference')
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad(out.float().sum(), inputs)
    ref_grads = torch.autograd.grad(ref.float().sum(), inputs)
    for g, r, t in zip(grads, ref_grads, inputs):
        assert g.dtype == t.dtype == torch.float32
        torch.testing.assert_close(g, r, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize('infer_hidden', [1 << 20, 40])
def test_inference_runs_without_the_function(monkeypatch, infer_hidden):
    # 40 hidden values: blocks of CPU_BLOCK=7 pixels, a ragged last one
    monkeypatch.setattr(mlp_module, 'CPU_BLOCK', 7)
    monkeypatch.setattr(mlp_module, 'INFER_HIDDEN', infer_hidden)
    inputs = _inputs(2, 6, 5, 9, 24, 6, torch.float32)
    ref = channel_mlp(*inputs, impl='reference')
    with torch.no_grad():
        out = channel_mlp(*inputs)
    assert out.grad_fn is None
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # frozen weights and an input without grad: nothing recorded either
    frozen = [t.detach() for t in inputs]
    assert channel_mlp(*frozen).grad_fn is None
    torch.testing.assert_close(channel_mlp(*frozen), ref, rtol=1e-5, atol=1e-5)
