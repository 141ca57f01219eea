"""Public API of the clustering ops: one function per op, one dispatch.

Every function takes ``impl='auto'|'reference'|'cpu'|'triton'``:

- ``reference`` (``reference.py``): readable PyTorch, any device; the test
  oracle and the fallback.
- ``cpu`` (``csrc/cluster_cpu.cpp`` through ``cpu.py``): fused C++/OpenMP
  kernels for CPU tensors, available when ``fec_mm._ext`` was built.
- ``triton`` (``triton_kernels.py``): fused Triton kernels for CUDA tensors
  (float32/float16/bfloat16); on CPU tensors only under ``TRITON_INTERPRET=1``.
- ``auto``: ``cpu`` for CPU tensors when the extension is built, ``triton``
  for CUDA tensors when Triton is installed, else ``reference``.

The fused ones are ``torch.library`` custom ops with autograd and fake
implementations (``library.py``), so ``torch.compile`` keeps them in one graph.

While ``torch.onnx.export`` traces, every ``impl`` runs the export
formulation of ``export.py`` instead (the same maths in standard ONNX ops):
no exporter knows the custom ops, and the reference's ``index_add`` has no
faithful ONNX translation.
"""
import importlib.util
import os
from typing import Callable, Dict, Tuple

import torch
from torch import Tensor

from . import cpu, export, reference
from .library import OPS
from .reference import chosen_cosine

IMPLS = ('auto', 'reference', 'cpu', 'triton')
# Center update of cluster_encode: FEC's plain mean (docs/notes/design.md §2 step 6) or
# Context Clusters' similarity-weighted mean (§7).
AGGREGATIONS = ('mean', 'similarity')

# op name -> impl name -> callable.
_IMPLS: Dict[str, Dict[str, Callable]] = {
    'cluster_assign': {'reference': reference.cluster_assign_reference},
    'cluster_encode': {'reference': reference.cluster_encode_reference},
    'cluster_pool': {'reference': reference.cluster_pool_reference},
}
for _impl, _ops in OPS.items():
    for _op, _fn in _ops.items():
        _IMPLS[_op][_impl] = _fn

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _triton_installed() -> bool:
    return importlib.util.find_spec('triton') is not None


def _unavailable(impl: str, device_type: str, dtype: torch.dtype) -> str:
    """Why ``impl`` cannot run on these tensors ('' when it can)."""
    if impl == 'cpu':
        if device_type != 'cpu':
            return f"impl='cpu' needs CPU tensors, got {device_type} tensors"
        if not cpu.is_available():
            return "impl='cpu' needs the compiled extension fec_mm._ext, which is not built"
    elif impl == 'triton':
        if not _triton_installed():
            return "impl='triton' needs Triton, which is not installed"
        if device_type != 'cuda' and os.environ.get('TRITON_INTERPRET') != '1':
            return (f"impl='triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU "
                    f"tensors), got {device_type} tensors")
        if dtype not in TRITON_DTYPES:
            return f"impl='triton' supports {TRITON_DTYPES}, got {dtype}"
    return ''


def _check_inputs(op: str, points: Tensor, centers: Tensor, *pairs: Tuple[str, Tensor]) -> None:
    """Raise a ValueError naming the argument whose shape/dtype/device is off."""
    named = [('points', points), ('centers', centers), *pairs]
    for name, t in named:
        if t.dim() != 3:
            raise ValueError(f'{op}: {name} must be 3-D (R, *, d), got shape {tuple(t.shape)}')
    R, N, d = points.shape
    M = centers.shape[1]
    expected = {'points': (R, N, d), 'values': (R, N, d),
                'centers': (R, M, d), 'value_centers': (R, M, d)}
    for name, t in named:
        if tuple(t.shape) != expected[name]:
            raise ValueError(f'{op}: {name} has shape {tuple(t.shape)}, expected '
                             f'{expected[name]} from points {tuple(points.shape)} and '
                             f'centers {tuple(centers.shape)}')
        if t.dtype != points.dtype:
            raise ValueError(f'{op}: {name} has dtype {t.dtype}, points have {points.dtype}')
        if t.device != points.device:
            raise ValueError(f'{op}: {name} is on {t.device}, points are on {points.device}')
    if not points.is_floating_point():
        raise ValueError(f'{op}: expected floating-point tensors, got {points.dtype}')
    if M == 0 or N == 0:
        raise ValueError(f'{op}: need at least one point and one center, got N={N}, M={M}')


def _check_scalar(op: str, name: str, t: Tensor, points: Tensor) -> None:
    if t.numel() != 1:
        raise ValueError(f'{op}: {name} must hold one value, got shape {tuple(t.shape)}')
    if t.device != points.device:
        raise ValueError(f'{op}: {name} is on {t.device}, points are on {points.device}')


def resolve_impl(op: str, impl: str, device_type: str,
                 dtype: torch.dtype = torch.float32) -> Callable:
    """Return the callable of ``op`` for ``impl`` on tensors of this device and dtype.

    'auto' picks the fused implementation of the device when it can run
    (``cpu`` on CPU, ``triton`` on CUDA) and falls back to the reference.
    """
    if impl not in IMPLS:
        raise ValueError(f'{op}: unknown impl {impl!r}; valid ones are {IMPLS}')
    if impl == 'auto':
        fused = {'cpu': 'cpu', 'cuda': 'triton'}.get(device_type)
        impl = fused if fused and not _unavailable(fused, device_type, dtype) else 'reference'
    else:
        reason = _unavailable(impl, device_type, dtype)
        if reason:
            raise RuntimeError(f'{op}: {reason}')
    return _IMPLS[op][impl]


def cluster_assign(points: Tensor, centers: Tensor, impl: str = 'auto') -> Tuple[Tensor, Tensor]:
    """Cosine-similarity argmax of each point over the centers.

    Args:
        points (Tensor): (R, N, d).
        centers (Tensor): (R, M, d).
        impl (str): 'auto', 'reference', 'cpu' or 'triton'.

    Returns:
        tuple[Tensor, Tensor]: index (R, N) int64 (ties to the lowest index)
        and cos (R, N), the similarity to the chosen center.
    """
    _check_inputs('cluster_assign', points, centers)
    if export.is_exporting():
        return export.cluster_assign_export(points, centers)
    return resolve_impl('cluster_assign', impl, points.device.type, points.dtype)(points, centers)


def cluster_encode(points: Tensor, values: Tensor, centers: Tensor, value_centers: Tensor,
                   alpha: Tensor, beta: Tensor, impl: str = 'auto',
                   return_assignment: bool = False, aggregation: str = 'mean'):
    """Clustering-based feature encoding (docs/notes/design.md §2, mixer steps 4-7).

    One op for FEC and Context Clusters (CoC): they differ in the center
    update only. With s_n = sigmoid(β + α·cos_n) each point's similarity to
    its center a(n):

    - ``aggregation='mean'`` (FEC): g_m = (vc_m + Σ_{a(n)=m} v_n) / (1 + count_m);
    - ``aggregation='similarity'`` (CoC after the authors' fix 3ccb0b6):
      g_m = (vc_m + Σ_{a(n)=m} s_n·v_n) / (1 + Σ_{a(n)=m} s_n).

    Args:
        points, values (Tensor): (R, N, d).
        centers, value_centers (Tensor): (R, M, d).
        alpha, beta (Tensor): one-element learnable scalars.
        impl (str): 'auto', 'reference', 'cpu' or 'triton'.
        return_assignment (bool): Also return what the op aggregated with:
            the index (R, N) int64 of each point's center and the cosine
            (R, N) to it (detached). Costs nothing extra: every
            implementation computes both anyway.
        aggregation (str): 'mean' (FEC) or 'similarity' (Context Clusters).

    Returns:
        Tensor: (R, N, d), s[a(n), n] · g_{a(n)} for every point; or
        (out, index, cos) with ``return_assignment``.
    """
    if aggregation not in AGGREGATIONS:
        raise ValueError(f'cluster_encode: unknown aggregation {aggregation!r}; valid ones are '
                         f'{AGGREGATIONS}')
    _check_inputs('cluster_encode', points, centers, ('values', values),
                  ('value_centers', value_centers))
    _check_scalar('cluster_encode', 'alpha', alpha, points)
    _check_scalar('cluster_encode', 'beta', beta, points)
    if export.is_exporting():
        return export.cluster_encode_export(points, values, centers, value_centers, alpha,
                                            beta, return_assignment=return_assignment,
                                            aggregation=aggregation)
    fn = resolve_impl('cluster_encode', impl, points.device.type, points.dtype)
    return fn(points, values, centers, value_centers, alpha, beta,
              return_assignment=return_assignment, aggregation=aggregation)


def cluster_pool(points: Tensor, values: Tensor, centers: Tensor, value_centers: Tensor,
                 impl: str = 'auto', return_assignment: bool = False):
    """Clustering-based feature pooling (docs/notes/design.md §2, cluster pooling).

    Args:
        points, values (Tensor): (R, N, d).
        centers, value_centers (Tensor): (R, M, d).
        impl (str): 'auto', 'reference', 'cpu' or 'triton'.
        return_assignment (bool): Also return the index (R, N) int64 the op
            aggregated with and the cosine (R, N) of each point with its
            center (one gather of the normalised centers, detached).

    Returns:
        Tensor: (R, M, d), (vcenter_m + Σ_{a(n)=m} v_n) / (1 + count_m); or
        (out, index, cos) with ``return_assignment``.
    """
    _check_inputs('cluster_pool', points, centers, ('values', values),
                  ('value_centers', value_centers))
    if export.is_exporting():
        return export.cluster_pool_export(points, values, centers, value_centers,
                                          return_assignment=return_assignment)
    fn = resolve_impl('cluster_pool', impl, points.device.type, points.dtype)
    if not return_assignment:
        return fn(points, values, centers, value_centers)
    out, index = fn(points, values, centers, value_centers, return_assignment=True)
    with torch.no_grad():
        cos = chosen_cosine(points, centers, index)
    return out, index, cos
