"""Triton kernels of the clustering ops (GPU; CPU tensors under ``TRITON_INTERPRET=1``).

Same contract as :mod:`fec_mm.ops.cpu` (``assign_forward`` ... ``pool_backward``),
used through :mod:`fec_mm.ops.library`. Semantics are those of ``reference.py``
(docs/notes/design.md §2); memory is O((N + M)·d): nothing of size M×N is stored.

- Assignment: one program per (region, block of points) streams over blocks
  of centers; the similarity tile is a ``tl.dot`` in fp32 (IEEE, no TF32, so
  the argmax matches the reference) and the running argmax keeps the lowest
  index on ties.
- Aggregation is a segmented sum, not atomics, so results are deterministic:
  points are sorted by (region, center) with a stable sort and each program
  sums the members of one center in point order.
- Everything accumulates in fp32; float16 / bfloat16 inputs are loaded as they
  are and results are cast back to the input dtype.
- N and M are runtime arguments (M = N/4 in pooling changes with every image
  size in detection: constexpr would recompile per size); the channel count d
  is a compile-time constant (the channel loops are unrolled).
"""
from typing import Tuple

import torch
import triton
import triton.language as tl
from torch import Tensor

_EPS = 1e-12  # F.normalize's clamp of the norm, as in the reference
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# One config, no autotuning: multi-config autotune cannot run without a GPU
# (the interpreter), and these sizes keep every tile in registers on a GPU.
_BLOCK_N = 64
_BLOCK_M = 64
_BLOCK_K = 32   # members summed per step of the segmented sum


def _block_d(d: int) -> int:
    # tl.dot needs every block dimension >= 16.
    return max(16, min(64, triton.next_power_of_2(d)))


# --------------------------------------------------------------------------- kernels
@triton.jit
def _assign_kernel(P, CN, ALPHA, IDX, COS, N, M,
                   D: tl.constexpr, USE_ALPHA: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    """index[r, n] = argmax_m sign(alpha)·(ĉ_m · p_n), cos[r, n] = ĉ_index · p̂_n."""
    pid_n = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = r * N + offs_n
    sign = 1.0
    if USE_ALPHA:
        # argmax of alpha·cos: of cos, of -cos, or index 0 when every score
        # is equal (alpha = 0, also NaN, as torch.argmax of the reference).
        a = tl.load(ALPHA).to(tl.float32)
        sign = tl.where(a > 0, 1.0, tl.where(a < 0, -1.0, 0.0))
    best = tl.full([BLOCK_N], float('-inf'), tl.float32)
    arg = tl.zeros([BLOCK_N], tl.int32)
    for m0 in range(0, M, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        s = tl.zeros([BLOCK_N, BLOCK_M], tl.float32)
        for k0 in range(0, D, BLOCK_D):
            offs_d = k0 + tl.arange(0, BLOCK_D)
            mask_d = offs_d < D
            p = tl.load(P + rows[:, None] * D + offs_d[None, :],
                        mask=mask_n[:, None] & mask_d[None, :], other=0.0)
            c = tl.load(CN + (r * M + offs_m)[:, None] * D + offs_d[None, :],
                        mask=mask_m[:, None] & mask_d[None, :], other=0.0)
            s += tl.dot(p, tl.trans(c), input_precision='ieee')
        # dividing by |p_n| > 0 does not move the argmax, so it is skipped
        s = tl.where(mask_m[None, :], s * sign, float('-inf'))
        blk_best, blk_arg = tl.max(s, axis=1, return_indices=True,
                                   return_indices_tie_break_left=True)
        # strict >: on a tie with an earlier block the earlier center stays
        upd = blk_best > best
        best = tl.where(upd, blk_best, best)
        arg = tl.where(upd, blk_arg + m0, arg)
    dot = tl.zeros([BLOCK_N], tl.float32)
    sq = tl.zeros([BLOCK_N], tl.float32)
    centre_rows = r * M + arg
    for k0 in range(0, D, BLOCK_D):
        offs_d = k0 + tl.arange(0, BLOCK_D)
        mask = mask_n[:, None] & (offs_d < D)[None, :]
        p = tl.load(P + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        c = tl.load(CN + centre_rows[:, None] * D + offs_d[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        dot += tl.sum(p * c, axis=1)
        sq += tl.sum(p * p, axis=1)
    tl.store(IDX + rows, arg.to(tl.int64), mask=mask_n)
    tl.store(COS + rows, dot / tl.maximum(tl.sqrt(sq), 1e-12), mask=mask_n)


@triton.jit
def _segment_sum_kernel(X, WEIGHT, PERM, OFFSETS, BASE, OUT, DEN,
                        D: tl.constexpr, USE_WEIGHT: tl.constexpr, USE_BASE: tl.constexpr,
                        BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    """out[row] = (base[row] + Σ_members w_n·x_n) / den[row] with den[row] = 1 +
    Σ_members w_n (w = 1 without USE_WEIGHT: 1 + count), stored in DEN (USE_BASE);
    or Σ_members w_n·x_n. Members of row in sorted point order: deterministic."""
    row = tl.program_id(0).to(tl.int64)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    start = tl.load(OFFSETS + row)
    end = tl.load(OFFSETS + row + 1)
    acc = tl.zeros([BLOCK_D], tl.float32)
    wsum = tl.zeros([BLOCK_K], tl.float32)
    for k0 in range(start, end, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < end
        pts = tl.load(PERM + offs_k, mask=mask_k, other=0)
        x = tl.load(X + pts[:, None] * D + offs_d[None, :],
                    mask=mask_k[:, None] & mask_d[None, :], other=0.0).to(tl.float32)
        if USE_WEIGHT:
            w = tl.load(WEIGHT + pts, mask=mask_k, other=0.0)
            x = x * w[:, None]
            wsum += w
        acc += tl.sum(x, axis=0)
    if USE_BASE:
        base = tl.load(BASE + row * D + offs_d, mask=mask_d, other=0.0).to(tl.float32)
        if USE_WEIGHT:
            den = 1.0 + tl.sum(wsum, axis=0)
        else:
            den = 1.0 + (end - start).to(tl.float32)
        acc = (base + acc) / den
        if tl.program_id(1) == 0:
            tl.store(DEN + row, den)
    tl.store(OUT + row * D + offs_d, acc.to(OUT.dtype.element_ty), mask=mask_d)


@triton.jit
def _dispatch_kernel(G, IDX, COS, ALPHA, BETA, OUT, N, M,
                     D: tl.constexpr, USE_SIM: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """out_n = sigmoid(β + α·cos_n)·g_{a(n)} (USE_SIM, docs/notes/design.md §2
    step 7) or g_{a(n)}."""
    pid_n = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = r * N + offs_n
    centre_rows = r * M + tl.load(IDX + rows, mask=mask_n, other=0)
    if USE_SIM:
        z = tl.load(BETA).to(tl.float32) + tl.load(ALPHA).to(tl.float32) * tl.load(
            COS + rows, mask=mask_n, other=0.0)
        s = tl.sigmoid(z)
    for k0 in range(0, D, BLOCK_D):
        offs_d = k0 + tl.arange(0, BLOCK_D)
        mask = mask_n[:, None] & (offs_d < D)[None, :]
        g = tl.load(G + centre_rows[:, None] * D + offs_d[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        if USE_SIM:
            g = g * s[:, None]
        tl.store(OUT + rows[:, None] * D + offs_d[None, :], g.to(OUT.dtype.element_ty),
                 mask=mask)


@triton.jit
def _point_backward_kernel(GRAD_OUT, G, GRAD_G, DEN, IDX, COS, ALPHA, BETA, GRAD_COS, V,
                           P, CN, GRAD_V, GRAD_P, GZ, WEIGHT, N, M,
                           D: tl.constexpr, ENCODE: tl.constexpr, WEIGHTED: tl.constexpr,
                           BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    """Per-point gradients; a point only meets its own center, so O(N·d).

    ENCODE (out_n = s_n·g_a, s_n = sigmoid(β + α·cos_n), g_a = (vc_a +
    Σ w_k·v_k) / den_a with w = 1, or w = s when WEIGHTED (docs/notes/design.md §7)):
        gs_n = grad_out_n · g_a (+ grad_g_a · (v_n - g_a) / den_a, WEIGHTED),
        gz_n = gs_n·s_n(1 - s_n), grad_cos_n = α·gz_n,
        grad_v_n = w_n·grad_g_a / den_a.
    Always: grad_p_n = grad_cos_n · d(ĉ_a · p̂_n)/dp_n and the weight
    grad_cos_n / max(|p_n|, eps) of p_n in the centers' gradient.
    """
    pid_n = tl.program_id(0)
    r = tl.program_id(1).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < N
    rows = r * N + offs_n
    centre_rows = r * M + tl.load(IDX + rows, mask=mask_n, other=0)
    # first pass over channels: |p|², p·ĉ and, for the encoding, grad_out·g
    sq = tl.zeros([BLOCK_N], tl.float32)
    pc = tl.zeros([BLOCK_N], tl.float32)
    og = tl.zeros([BLOCK_N], tl.float32)
    gvg = tl.zeros([BLOCK_N], tl.float32)
    for k0 in range(0, D, BLOCK_D):
        offs_d = k0 + tl.arange(0, BLOCK_D)
        mask = mask_n[:, None] & (offs_d < D)[None, :]
        p = tl.load(P + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        c = tl.load(CN + centre_rows[:, None] * D + offs_d[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        sq += tl.sum(p * p, axis=1)
        pc += tl.sum(p * c, axis=1)
        if ENCODE:
            go = tl.load(GRAD_OUT + rows[:, None] * D + offs_d[None, :], mask=mask,
                         other=0.0).to(tl.float32)
            g = tl.load(G + centre_rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0)
            og += tl.sum(go * g, axis=1)
            if WEIGHTED:
                v = tl.load(V + rows[:, None] * D + offs_d[None, :], mask=mask,
                            other=0.0).to(tl.float32)
                gg = tl.load(GRAD_G + centre_rows[:, None] * D + offs_d[None, :], mask=mask,
                             other=0.0)
                gvg += tl.sum(gg * (v - g), axis=1)
    if ENCODE:
        alpha = tl.load(ALPHA).to(tl.float32)
        s = tl.sigmoid(tl.load(BETA).to(tl.float32)
                       + alpha * tl.load(COS + rows, mask=mask_n, other=0.0))
        inv = 1.0 / tl.load(DEN + centre_rows, mask=mask_n, other=1.0)
        if WEIGHTED:
            og += gvg * inv
            inv = inv * s
        gz = og * s * (1.0 - s)
        tl.store(GZ + rows, gz, mask=mask_n)
        gcos = alpha * gz
    else:
        gcos = tl.load(GRAD_COS + rows, mask=mask_n, other=0.0).to(tl.float32)
    norm = tl.sqrt(sq)
    big = norm >= 1e-12
    safe = tl.where(big, norm, 1.0)
    # d(ĉ·x/|x|)/dx = (ĉ - x (x·ĉ)/|x|²)/|x|; below eps the norm is the
    # constant eps (its clamp has no gradient): ĉ/eps.
    coef = tl.where(big, pc / (safe * safe), 0.0)
    scale = tl.where(big, gcos / safe, gcos / 1e-12)
    tl.store(WEIGHT + rows, gcos / tl.maximum(norm, 1e-12), mask=mask_n)
    for k0 in range(0, D, BLOCK_D):
        offs_d = k0 + tl.arange(0, BLOCK_D)
        mask = mask_n[:, None] & (offs_d < D)[None, :]
        p = tl.load(P + rows[:, None] * D + offs_d[None, :], mask=mask, other=0.0).to(tl.float32)
        c = tl.load(CN + centre_rows[:, None] * D + offs_d[None, :], mask=mask,
                    other=0.0).to(tl.float32)
        gp = scale[:, None] * (c - p * coef[:, None])
        tl.store(GRAD_P + rows[:, None] * D + offs_d[None, :],
                 gp.to(GRAD_P.dtype.element_ty), mask=mask)
        if ENCODE:
            gg = tl.load(GRAD_G + centre_rows[:, None] * D + offs_d[None, :], mask=mask,
                         other=0.0)
            tl.store(GRAD_V + rows[:, None] * D + offs_d[None, :],
                     (gg * inv[:, None]).to(GRAD_V.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- helpers
def _check(*tensors: Tensor) -> None:
    for t in tensors:
        if t.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"fec_mm: impl='triton' supports {SUPPORTED_DTYPES}, got {t.dtype}")


def _normalize(x: Tensor) -> Tensor:
    """F.normalize in fp32 (small (R, M, d) tensors), cast back for tl.dot."""
    x32 = x.float()
    return (x32 / x32.norm(dim=-1, keepdim=True).clamp_min(_EPS)).to(x.dtype).contiguous()


def _normalize_backward(x: Tensor, grad_y: Tensor) -> Tensor:
    """Gradient of x / max(|x|, eps) for rows of x: (R, M, d), fp32 grad_y."""
    x = x.float()
    norm = x.norm(dim=-1, keepdim=True)
    safe = norm.clamp_min(_EPS)
    proj = (x * grad_y).sum(-1, keepdim=True) / (safe * safe)
    return torch.where(norm >= _EPS, (grad_y - x * proj) / safe, grad_y / _EPS)


def _grid(R: int, N: int) -> Tuple[int, int]:
    return triton.cdiv(N, _BLOCK_N), R


def _assign(points: Tensor, cn: Tensor, alpha: Tensor = None) -> Tuple[Tensor, Tensor]:
    R, N, d = points.shape
    M = cn.shape[1]
    index = torch.empty(R, N, dtype=torch.int64, device=points.device)
    cos = torch.empty(R, N, dtype=torch.float32, device=points.device)
    _assign_kernel[_grid(R, N)](
        points, cn, alpha if alpha is not None else cos, index, cos, N, M,
        D=d, USE_ALPHA=alpha is not None,
        BLOCK_N=_BLOCK_N, BLOCK_M=_BLOCK_M, BLOCK_D=_block_d(d))
    return index, cos


def _members(index: Tensor, M: int) -> Tuple[Tensor, Tensor, Tensor]:
    """Points sorted by (region, center), stably: (perm, offsets, count int32)."""
    R, N = index.shape
    key = (index + torch.arange(R, device=index.device)[:, None] * M).reshape(-1)
    sorted_key, perm = torch.sort(key, stable=True)
    # searchsorted rather than bincount: no atomics, and allowed under
    # torch.use_deterministic_algorithms(True)
    offsets = torch.searchsorted(sorted_key, torch.arange(R * M + 1, device=index.device))
    return perm, offsets, offsets.diff().to(torch.int32).view(R, M)


def _segment_sum(x: Tensor, perm: Tensor, offsets: Tensor, M: int, weight: Tensor = None,
                 base: Tensor = None, out_dtype: torch.dtype = torch.float32,
                 den: Tensor = None) -> Tensor:
    """Segment sums (see the kernel); with ``base``, ``den`` (R, M) fp32 receives
    the denominators when given."""
    R, _, d = x.shape
    out = torch.empty(R, M, d, dtype=out_dtype, device=x.device)
    if base is not None and den is None:
        den = torch.empty(R, M, dtype=torch.float32, device=x.device)
    block_d = _block_d(d)
    _segment_sum_kernel[(R * M, triton.cdiv(d, block_d))](
        x, weight if weight is not None else x, perm, offsets,
        base if base is not None else x, out, den if den is not None else out,
        D=d, USE_WEIGHT=weight is not None, USE_BASE=base is not None,
        BLOCK_K=_BLOCK_K, BLOCK_D=block_d)
    return out


def _dispatch(g: Tensor, index: Tensor, out_dtype: torch.dtype, cos: Tensor = None,
              alpha: Tensor = None, beta: Tensor = None) -> Tensor:
    R, M, d = g.shape
    N = index.shape[1]
    out = torch.empty(R, N, d, dtype=out_dtype, device=g.device)
    use_sim = cos is not None
    _dispatch_kernel[_grid(R, N)](
        g, index, cos if use_sim else g, alpha if use_sim else g, beta if use_sim else g,
        out, N, M, D=d, USE_SIM=use_sim, BLOCK_N=_BLOCK_N, BLOCK_D=_block_d(d))
    return out


def _cos_backward(points: Tensor, centers: Tensor, cn: Tensor, index: Tensor,
                  grad_cos: Tensor = None, encode: Tuple[Tensor, ...] = None) -> Tuple[Tensor, ...]:
    """Shared per-point backward; returns (grad_p, grad_c, grad_v, gz)."""
    R, N, d = points.shape
    M = centers.shape[1]
    grad_p = torch.empty_like(points)
    weight = torch.empty(R, N, dtype=torch.float32, device=points.device)
    weighted = False
    if encode is not None:
        grad_out, g, grad_g, den, cos, alpha, beta, values, weighted = encode
        grad_v = torch.empty_like(grad_out)
        gz = torch.empty(R, N, dtype=torch.float32, device=points.device)
        args = (grad_out, g, grad_g, den, index, cos, alpha, beta, cos, values)
    else:
        grad_v = gz = None
        args = (points, points, points, points, index, points, points, points, grad_cos, points)
    _point_backward_kernel[_grid(R, N)](
        *args, points, cn, grad_v if grad_v is not None else grad_p, grad_p,
        gz if gz is not None else weight, weight, N, M,
        D=d, ENCODE=encode is not None, WEIGHTED=weighted,
        BLOCK_N=_BLOCK_N, BLOCK_D=_block_d(d))
    perm, offsets, _ = _members(index, M)
    grad_cn = _segment_sum(points, perm, offsets, M, weight=weight)
    grad_c = _normalize_backward(centers, grad_cn).to(centers.dtype)
    return grad_p, grad_c, grad_v, gz


# --------------------------------------------------------------------------- contract
def assign_forward(points: Tensor, centers: Tensor) -> Tuple[Tensor, Tensor]:
    """(index (R,N) int64, cos (R,N) in the points' dtype) of the cosine argmax."""
    _check(points, centers)
    index, cos = _assign(points.contiguous(), _normalize(centers))
    return index, cos.to(points.dtype)


def assign_backward(grad_cos: Tensor, points: Tensor, centers: Tensor,
                    index: Tensor) -> Tuple[Tensor, Tensor]:
    """Grads of (points, centers) from the grad of ``cos``."""
    points, centers = points.contiguous(), centers.contiguous()
    grad_p, grad_c, _, _ = _cos_backward(points, centers, _normalize(centers), index,
                                         grad_cos=grad_cos.float().contiguous())
    return grad_p, grad_c


def encode_forward(points: Tensor, values: Tensor, centers: Tensor, value_centers: Tensor,
                   alpha: Tensor, beta: Tensor, weighted: bool = False) -> Tuple[Tensor, ...]:
    """(out (R,N,d), index, cos fp32, g (R,M,d) fp32, den (R,M) fp32): den is
    1 + count, or 1 + Σ s of the members with ``weighted`` (docs/notes/design.md §7)."""
    _check(points, values, centers, value_centers)
    points, values = points.contiguous(), values.contiguous()
    M = centers.shape[1]
    index, cos = _assign(points, _normalize(centers), alpha.reshape(1))
    perm, offsets, _ = _members(index, M)
    den = torch.empty(index.shape[0], M, dtype=torch.float32, device=points.device)
    s = torch.sigmoid(beta.float() + alpha.float() * cos) if weighted else None
    g = _segment_sum(values, perm, offsets, M, weight=s, base=value_centers.contiguous(),
                     den=den)
    out = _dispatch(g, index, values.dtype, cos, alpha.reshape(1), beta.reshape(1))
    return out, index, cos, g, den


def encode_backward(grad_out: Tensor, points: Tensor, values: Tensor, centers: Tensor,
                    alpha: Tensor, beta: Tensor, index: Tensor, cos: Tensor, g: Tensor,
                    den: Tensor, weighted: bool = False) -> Tuple[Tensor, ...]:
    """Grads of (points, values, centers, value_centers, alpha, beta); the last
    two are 0-d float64."""
    grad_out, points, centers = grad_out.contiguous(), points.contiguous(), centers.contiguous()
    values = values.contiguous()
    alpha, beta = alpha.reshape(1), beta.reshape(1)
    M = centers.shape[1]
    perm, offsets, _ = _members(index, M)
    s = torch.sigmoid(beta.float() + alpha.float() * cos)
    # grad_g_m = Σ_{a(n)=m} s_n·grad_out_n
    grad_g = _segment_sum(grad_out, perm, offsets, M, weight=s)
    grad_p, grad_c, grad_v, gz = _cos_backward(
        points, centers, _normalize(centers), index,
        encode=(grad_out, g, grad_g, den, cos, alpha, beta, values, weighted))
    grad_vc = (grad_g / den[..., None]).to(grad_out.dtype)
    grad_alpha = (gz.double() * cos.double()).sum()
    grad_beta = gz.double().sum()
    return grad_p, grad_v, grad_c, grad_vc, grad_alpha, grad_beta


def pool_forward(points: Tensor, values: Tensor, centers: Tensor,
                 value_centers: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(g (R,M,d) in the values' dtype, index (R,N), count (R,M) int32)."""
    _check(points, values, centers, value_centers)
    M = centers.shape[1]
    index, _ = _assign(points.contiguous(), _normalize(centers))
    perm, offsets, count = _members(index, M)
    g = _segment_sum(values.contiguous(), perm, offsets, M, base=value_centers.contiguous(),
                     out_dtype=values.dtype)
    return g, index, count


def pool_backward(grad_g: Tensor, index: Tensor, count: Tensor) -> Tuple[Tensor, Tensor]:
    """Grads of (values (R,N,d), value_centers (R,M,d))."""
    grad_vc = (grad_g.float() / (1.0 + count[..., None])).contiguous()
    grad_v = _dispatch(grad_vc, index, grad_g.dtype)
    return grad_v, grad_vc.to(grad_g.dtype)
