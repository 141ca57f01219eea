"""The per-pixel MLP of an FEC block, ``fc2(GELU(fc1(x)))`` over the channels of a map.

Outside the clustering steps, the MLP is what holds most of the memory of an
FEC training step: PyTorch saves the permuted input, the hidden
pre-activation and the hidden activation, ``(1 + 2·ratio)·C`` values per pixel
(ratio 8 in the first stages). Two implementations, one API:

- ``reference``: ``nn.Linear``-style PyTorch on the channels-last view, the
  readable oracle.
- ``chunked`` (what ``auto`` picks on every device): works on the (C, H·W)
  matrix of each image in blocks of pixels, so the hidden activations exist
  for one block at a time and stay in cache, and saves only its input for
  backward, where each block's hidden activations are recomputed (one extra
  ``fc1`` product, ~1/2 of a forward's FLOPs of the MLP). No permuted copies.
  When no gradient is recorded (inference), the same products run without
  the autograd Function, in blocks of up to ``INFER_HIDDEN`` hidden values
  (a whole 224² image at once).

The GELU is the exact (erf) one, as ``nn.GELU()``.
"""
import torch
import torch.nn.functional as F
from torch import Tensor

from .export import is_exporting

IMPLS = ('auto', 'reference', 'chunked')
# Pixels per block on CPU: the block's (hidden, pixels) matrices stay in the
# core's cache. On GPUs one block is the whole image (recomputation only).
CPU_BLOCK = 1024
# Without autograd (inference), hidden values per block: larger blocks, fewer
# calls; a whole 224² image is one block, and at larger sizes the hidden block
# stays at 4 MiB (float32), so the inference peak does not grow with the image.
INFER_HIDDEN = 1 << 20


def channel_mlp_reference(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
    """(B, C, H, W) -> (B, C_out, H, W): ``Linear(w2, b2)(GELU(Linear(w1, b1)(x)))`` per pixel."""
    h = F.gelu(F.linear(x.permute(0, 2, 3, 1), w1, b1))
    return F.linear(h, w2, b2).permute(0, 3, 1, 2)


def _blocks(n: int, device: torch.device, step: int = CPU_BLOCK):
    step = step if device.type == 'cpu' else n
    return [(s, min(s + step, n)) for s in range(0, n, step)]


def _forward(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
             step: int = CPU_BLOCK) -> Tensor:
    """The MLP in blocks of ``step`` pixels, nothing saved: (B, C, H, W) -> (B, C_out, H, W)."""
    B, C, H, W = x.shape
    xs = x.reshape(B, C, H * W)
    out = x.new_empty(B, w2.shape[0], H * W)
    for b in range(B):
        for s, e in _blocks(H * W, x.device, step):
            # the pre-activation is not kept: GELU in place
            hidden = torch.ops.aten.gelu_(torch.addmm(b1[:, None], w1, xs[b, :, s:e]))
            torch.addmm(b2[:, None], w2, hidden, out=out[b, :, s:e])
    return out.view(B, -1, H, W)


class _ChunkedMlp(torch.autograd.Function):
    """Inputs share one dtype; weight gradients accumulate over the blocks in
    float32 (float64 for float64 inputs)."""

    @staticmethod
    def forward(ctx, x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor) -> Tensor:
        ctx.save_for_backward(x, w1, b1, w2)
        return _forward(x, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        x, w1, b1, w2 = ctx.saved_tensors
        B, C, H, W = x.shape
        xs = x.reshape(B, C, H * W)
        gos = grad_out.to(x.dtype).reshape(B, -1, H * W)
        need_x, need_w1, need_b1, need_w2, need_b2 = ctx.needs_input_grad
        acc = torch.float64 if x.dtype == torch.float64 else torch.float32
        gx = torch.empty_like(xs) if need_x else None
        gw1 = torch.zeros_like(w1, dtype=acc)
        gb1 = torch.zeros_like(b1, dtype=acc)
        gw2 = torch.zeros_like(w2, dtype=acc)
        gb2 = gos.sum((0, 2), dtype=acc) if need_b2 else None
        for b in range(B):
            for s, e in _blocks(H * W, x.device):
                xb, gob = xs[b, :, s:e], gos[b, :, s:e]
                pre = torch.addmm(b1[:, None], w1, xb)  # recomputed, not saved
                if need_w2:
                    gw2 += torch.mm(gob, F.gelu(pre).t())
                g_pre = torch.ops.aten.gelu_backward(torch.mm(w2.t(), gob), pre)
                if need_w1:
                    gw1 += torch.mm(g_pre, xb.t())
                if need_b1:
                    gb1 += g_pre.sum(1)
                if need_x:
                    torch.mm(w1.t(), g_pre, out=gx[b, :, s:e])
        return (gx.view(B, C, H, W) if need_x else None, gw1 if need_w1 else None,
                gb1 if need_b1 else None, gw2 if need_w2 else None, gb2)


def _compute_dtype(x: Tensor) -> torch.dtype:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


def channel_mlp(x: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
                impl: str = 'auto') -> Tensor:
    """Per-pixel MLP ``w2·GELU(w1·x + b1) + b2`` over the channels of a map.

    Args:
        x (Tensor): (B, C, H, W).
        w1, b1 (Tensor): (C_hidden, C) and (C_hidden,).
        w2, b2 (Tensor): (C_out, C_hidden) and (C_out,).
        impl (str): 'auto' (= 'chunked'), 'reference' or 'chunked'.

    Returns:
        Tensor: (B, C_out, H, W).
    """
    if impl not in IMPLS:
        raise ValueError(f'channel_mlp: unknown impl {impl!r}; valid ones are {IMPLS}')
    if x.dim() != 4 or w1.shape[1] != x.shape[1] or w2.shape[1] != w1.shape[0]:
        raise ValueError(f'channel_mlp: x {tuple(x.shape)}, w1 {tuple(w1.shape)} and '
                         f'w2 {tuple(w2.shape)} do not chain as (B, C, H, W) -> C_hidden -> C_out')
    # While exporting or compiling, the plain layers: the chunked Function's
    # Python loops over images and pixel blocks would be unrolled for one fixed
    # shape, and its `addmm(out=<strided block>)` is a graph break for Dynamo
    # (Inductor fuses the plain layers itself and recomputes the GELU in backward).
    if impl == 'reference' or is_exporting() or torch.compiler.is_compiling():
        return channel_mlp_reference(x, w1, b1, w2, b2)
    # Under autocast, run in the autocast dtype as nn.Linear would; the casts
    # stay outside the Function, so autograd returns gradients in each dtype.
    dtype = _compute_dtype(x)
    with torch.autocast(x.device.type, enabled=False):
        inputs = tuple(t.to(dtype) for t in (x.contiguous(), w1, b1, w2, b2))
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            return _ChunkedMlp.apply(*inputs)
        # Nothing to save (inference): no autograd Function, larger blocks.
        return _forward(*inputs, step=max(CPU_BLOCK, INFER_HIDDEN // w1.shape[0]))
