"""The compiled implementations as ``torch.library`` custom ops with autograd.

For each fused implementation (``cpu``: ``fec_mm._ext``; ``triton``:
``triton_kernels``) six ops are registered under the ``fec_mm`` namespace,
e.g. ``torch.ops.fec_mm.cluster_encode_cpu`` and
``torch.ops.fec_mm.cluster_encode_backward_cpu``. Each has a fake (meta)
implementation, so ``torch.compile`` traces through them without a graph
break, and the forward ops carry their backward through
``torch.library.register_autograd``.

The forward ops return what backward needs besides the result (assignment,
cosine, aggregates, counts); the public functions at the bottom return only
the result. Backward needs no M×N tensor: each point only meets its center.
The kernel modules are imported inside the op bodies, on first call, so that
importing ``fec_mm.ops`` neither loads the extension nor imports Triton.
"""
import importlib
from typing import Tuple

import torch
from torch import Tensor

IMPL_MODULES = {'cpu': 'fec_mm.ops.cpu', 'triton': 'fec_mm.ops.triton_kernels'}


def _kernels(impl: str):
    return importlib.import_module(IMPL_MODULES[impl])


def _scalar_grad(grad: Tensor, like: Tensor) -> Tensor:
    return grad.to(like.dtype).reshape(like.shape)


def _like(t: Tensor) -> Tensor:
    """Fake output shaped like ``t`` but contiguous, as the kernels return it
    (``empty_like`` would copy the strides of a transposed input)."""
    return t.new_empty(t.shape)


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of the saved cosine and aggregates: fp32 accumulation for halves."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _define(impl: str) -> dict:
    """Register the custom ops of ``impl``; return the public callables."""
    ns = 'fec_mm::'

    # ------------------------------------------------------------ assign
    # Outputs (cos, index): the float output first, as torch.library.opcheck
    # sums the outputs starting from the first one.
    @torch.library.custom_op(f'{ns}cluster_assign_{impl}', mutates_args=())
    def assign(points: Tensor, centers: Tensor) -> Tuple[Tensor, Tensor]:
        index, cos = _kernels(impl).assign_forward(points, centers)
        return cos, index

    @assign.register_fake
    def _(points, centers):
        R, N, _ = points.shape
        return points.new_empty(R, N), points.new_empty(R, N, dtype=torch.int64)

    @torch.library.custom_op(f'{ns}cluster_assign_backward_{impl}', mutates_args=())
    def assign_backward(grad_cos: Tensor, points: Tensor, centers: Tensor,
                        index: Tensor) -> Tuple[Tensor, Tensor]:
        return _kernels(impl).assign_backward(grad_cos, points, centers, index)

    @assign_backward.register_fake
    def _(grad_cos, points, centers, index):
        return _like(points), _like(centers)

    def assign_setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1], output[1])

    def assign_grad(ctx, grad_cos, grad_index):
        points, centers, index = ctx.saved_tensors
        if grad_cos is None:
            return None, None
        return assign_backward(grad_cos, points, centers, index)

    assign.register_autograd(assign_grad, setup_context=assign_setup)

    # ------------------------------------------------------------ encode
    # `weighted`: Context Clusters' similarity-weighted center update instead
    # of FEC's mean (docs/notes/design.md §7). The last output is each center's denominator,
    # 1 + count (mean) or 1 + Σ s of its members (weighted).
    @torch.library.custom_op(f'{ns}cluster_encode_{impl}', mutates_args=())
    def encode(points: Tensor, values: Tensor, centers: Tensor, value_centers: Tensor,
               alpha: Tensor, beta: Tensor,
               weighted: bool = False) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _kernels(impl).encode_forward(points, values, centers, value_centers,
                                             alpha, beta, weighted)

    @encode.register_fake
    def _(points, values, centers, value_centers, alpha, beta, weighted=False):
        R, N, d = points.shape
        M = centers.shape[1]
        acc = state_dtype(points.dtype)
        return (_like(values), points.new_empty(R, N, dtype=torch.int64),
                points.new_empty(R, N, dtype=acc), value_centers.new_empty(R, M, d, dtype=acc),
                points.new_empty(R, M, dtype=acc))

    @torch.library.custom_op(f'{ns}cluster_encode_backward_{impl}', mutates_args=())
    def encode_backward(grad_out: Tensor, points: Tensor, values: Tensor, centers: Tensor,
                        alpha: Tensor, beta: Tensor, index: Tensor, cos: Tensor, g: Tensor,
                        denom: Tensor, weighted: bool = False
                        ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        return _kernels(impl).encode_backward(grad_out, points, values, centers, alpha, beta,
                                              index, cos, g, denom, weighted)

    @encode_backward.register_fake
    def _(grad_out, points, values, centers, alpha, beta, index, cos, g, denom,
          weighted=False):
        scalar = grad_out.new_empty((), dtype=torch.float64)
        return (_like(points), _like(grad_out), _like(centers),
                grad_out.new_empty(g.shape), scalar, _like(scalar))

    def encode_setup(ctx, inputs, output):
        points, values, centers, _, alpha, beta = inputs[:6]
        _, index, cos, g, denom = output
        ctx.weighted = bool(inputs[6]) if len(inputs) > 6 else False
        ctx.save_for_backward(points, values, centers, alpha, beta, index, cos, g, denom)

    def encode_grad(ctx, grad_out, *unused):
        # Only `out` is returned by the public op; the other outputs are
        # saved state, so their gradients are ignored.
        points, values, centers, alpha, beta, index, cos, g, denom = ctx.saved_tensors
        if grad_out is None:
            return None, None, None, None, None, None, None
        gp, gv, gc, gvc, ga, gb = encode_backward(grad_out, points, values, centers, alpha,
                                                  beta, index, cos, g, denom, ctx.weighted)
        return gp, gv, gc, gvc, _scalar_grad(ga, alpha), _scalar_grad(gb, beta), None

    encode.register_autograd(encode_grad, setup_context=encode_setup)

    # ------------------------------------------------------------ pool
    @torch.library.custom_op(f'{ns}cluster_pool_{impl}', mutates_args=())
    def pool(points: Tensor, values: Tensor, centers: Tensor,
             value_centers: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        return _kernels(impl).pool_forward(points, values, centers, value_centers)

    @pool.register_fake
    def _(points, values, centers, value_centers):
        R, N, _ = points.shape
        M = centers.shape[1]
        return (_like(value_centers), points.new_empty(R, N, dtype=torch.int64),
                points.new_empty(R, M, dtype=torch.int32))

    @torch.library.custom_op(f'{ns}cluster_pool_backward_{impl}', mutates_args=())
    def pool_backward(grad_g: Tensor, index: Tensor, count: Tensor) -> Tuple[Tensor, Tensor]:
        return _kernels(impl).pool_backward(grad_g, index, count)

    @pool_backward.register_fake
    def _(grad_g, index, count):
        R, N = index.shape
        return grad_g.new_empty(R, N, grad_g.shape[2]), _like(grad_g)

    def pool_setup(ctx, inputs, output):
        ctx.save_for_backward(output[1], output[2])

    def pool_grad(ctx, grad_g, *unused):
        # points and centers only choose the assignment: no gradient (docs/notes/design.md §2).
        index, count = ctx.saved_tensors
        if grad_g is None:
            return None, None, None, None
        gv, gvc = pool_backward(grad_g, index, count)
        return None, gv, None, gvc

    pool.register_autograd(pool_grad, setup_context=pool_setup)

    def cluster_assign(points: Tensor, centers: Tensor) -> Tuple[Tensor, Tensor]:
        cos, index = assign(points, centers)
        return index, cos

    def cluster_encode(points: Tensor, values: Tensor, centers: Tensor,
                       value_centers: Tensor, alpha: Tensor, beta: Tensor,
                       return_assignment: bool = False, aggregation: str = 'mean'):
        out, index, cos = encode(points, values, centers, value_centers, alpha, beta,
                                 aggregation == 'similarity')[:3]
        if return_assignment:
            return out, index, cos.detach().to(points.dtype)
        return out

    def cluster_pool(points: Tensor, values: Tensor, centers: Tensor,
                     value_centers: Tensor, return_assignment: bool = False):
        out, index = pool(points, values, centers, value_centers)[:2]
        if return_assignment:
            return out, index
        return out

    for fn in (cluster_assign, cluster_encode, cluster_pool):
        fn.__name__ = fn.__qualname__ = f'{fn.__name__}_{impl}'
    return {'cluster_assign': cluster_assign, 'cluster_encode': cluster_encode,
            'cluster_pool': cluster_pool}


OPS = {impl: _define(impl) for impl in IMPL_MODULES}
