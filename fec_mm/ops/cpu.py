"""Loader of the compiled CPU kernels (``fec_mm._ext``, built from ``csrc/``).

The extension is imported on first use. When it was not built the package
keeps working through the reference ops, and says so once in the log.
"""
import importlib
import logging
from types import ModuleType
from typing import Optional, Tuple

import torch
from torch import Tensor

_EXT: Optional[ModuleType] = None
_TRIED = False


def _log_missing(error: ImportError) -> None:
    msg = (f'fec_mm: the compiled CPU clustering kernels (fec_mm._ext) are not available '
           f'({error}); using the PyTorch reference ops. Build them with '
           f'`pip install -e .` or `python setup.py build_ext --inplace`.')
    try:
        from mmengine.logging import MMLogger
        MMLogger.get_current_instance().warning(msg)
    except ImportError:
        logging.getLogger('fec_mm').warning(msg)


def load_ext() -> Optional[ModuleType]:
    """Return the compiled extension, or None (logged once) if it cannot be imported."""
    global _EXT, _TRIED
    if not _TRIED:
        _TRIED = True
        try:
            _EXT = importlib.import_module('fec_mm._ext')
        except ImportError as error:
            _log_missing(error)
    return _EXT


# A constant for torch.compile: Dynamo calls it once while tracing instead of
# tracing into the import (which is a graph break on every dispatch).
@torch.compiler.assume_constant_result
def is_available() -> bool:
    """Whether the compiled CPU kernels can be used."""
    return load_ext() is not None


def ext() -> ModuleType:
    """The compiled extension; raises RuntimeError when it is missing."""
    module = load_ext()
    if module is None:
        raise RuntimeError("fec_mm: impl='cpu' needs the compiled extension fec_mm._ext, "
                           'which is not built (see the log); use impl="reference" or build it')
    return module


# Kernel contract shared with ``triton_kernels`` and used by ``library``:
# contiguous inputs; float16/bfloat16 run in float32 here and are cast back.
_COMPUTE = (torch.float32, torch.float64)


def _prep(*tensors: Tensor) -> Tuple[Tensor, ...]:
    # detach: the kernels compute no autograd graph (library.py does).
    return tuple(t.detach().contiguous().to(t.dtype if t.dtype in _COMPUTE else torch.float32)
                 for t in tensors)


def assign_forward(points: Tensor, centers: Tensor) -> Tuple[Tensor, Tensor]:
    """(index (R,N) int64, cos (R,N)) of the cosine argmax."""
    index, cos = ext().cluster_assign_forward(*_prep(points, centers))
    return index, cos.to(points.dtype)


def assign_backward(grad_cos: Tensor, points: Tensor, centers: Tensor,
                    index: Tensor) -> Tuple[Tensor, Tensor]:
    """Grads of points and centers from the grad of ``cos``."""
    gp, gc = ext().cluster_assign_backward(grad_cos.contiguous(), *_prep(points, centers),
                                           index.contiguous())
    return gp.to(points.dtype), gc.to(centers.dtype)


def encode_forward(points: Tensor, values: Tensor, centers: Tensor, value_centers: Tensor,
                   alpha: Tensor, beta: Tensor, weighted: bool = False) -> Tuple[Tensor, ...]:
    """(out, index, cos, g, denom) of the clustering feature encoding; cos, g and
    the centers' denominators (1 + count, or 1 + Σ s with ``weighted``) stay in
    the compute dtype (float32 for half inputs) for backward."""
    out, index, cos, g, denom = ext().cluster_encode_forward(
        *_prep(points, values, centers, value_centers), alpha.detach(), beta.detach(),
        bool(weighted))
    return out.to(values.dtype), index, cos, g, denom


def encode_backward(grad_out: Tensor, points: Tensor, values: Tensor, centers: Tensor,
                    alpha: Tensor, beta: Tensor, index: Tensor, cos: Tensor, g: Tensor,
                    denom: Tensor, weighted: bool = False) -> Tuple[Tensor, ...]:
    """Grads of (points, values, centers, value_centers, alpha, beta); the last two
    are 0-d float64."""
    # values and value_centers share the dtype of grad_out (checked by the API)
    dtypes = (points.dtype, grad_out.dtype, centers.dtype, grad_out.dtype)
    grad_out, points, values, centers, cos, g, denom = _prep(grad_out, points, values, centers,
                                                             cos, g, denom)
    grads = ext().cluster_encode_backward(grad_out, points, values, centers, alpha.detach(),
                                          beta.detach(), index.contiguous(), cos, g, denom,
                                          bool(weighted))
    return (*(t.to(dt) for t, dt in zip(grads[:4], dtypes)), grads[4], grads[5])


def pool_forward(points: Tensor, values: Tensor, centers: Tensor,
                 value_centers: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """(g, index, count int32) of the clustering feature pooling."""
    g, index, count = ext().cluster_pool_forward(*_prep(points, values, centers, value_centers))
    return g.to(values.dtype), index, count


def pool_backward(grad_g: Tensor, index: Tensor, count: Tensor) -> Tuple[Tensor, Tensor]:
    """Grads of (values, value_centers)."""
    (g,) = _prep(grad_g)
    gv, gvc = ext().cluster_pool_backward(g, index.contiguous(), count.contiguous())
    return gv.to(grad_g.dtype), gvc.to(grad_g.dtype)
