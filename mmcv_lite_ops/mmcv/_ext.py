"""``mmcv._ext`` for mmcv-lite: the few compiled mmcv ops fec-mm's configs use.

mmcv-lite ships all of ``mmcv.ops`` in Python but not its compiled module
``mmcv._ext``, so ``import mmcv.ops`` (and with it mmdet, mmseg and their
models) fails there. This module is that ``mmcv._ext``, installed as the file
``mmcv/_ext.py`` by the distribution ``fec-mm-mmcv-ops``. mmcv's own loader
(``mmcv.utils.ext_loader.load_ext``) imports it like the compiled module and
``mmcv.ops`` runs unchanged on top of it:

- ``nms``: torchvision's compiled kernel (CPU and CUDA), called so that it
  keeps the boxes mmcv's kernel keeps (``offset=0``, ties, IoU exactly at the
  threshold);
- ``roi_align_forward`` / ``roi_align_backward`` (``pool_mode='avg'``):
  torchvision's compiled RoIAlign, the same Detectron2 algorithm as mmcv's;
- ``sigmoid_focal_loss_forward`` / ``_backward``: mmcv's CUDA kernel's
  formula in PyTorch (mmdet and mmseg only call it on CUDA tensors);
- ``get_compiler_version`` / ``get_compiling_cuda_version``: say so.

Every other kernel of mmcv (deformable convolution, CARAFE, ...) is a
function that raises :class:`MissingMmcvOpError`, naming the kernel and how
to install full mmcv, when it is called. Nothing falls back silently.

A compiled mmcv always wins: Python's import system tries extension modules
(``_ext.cpython-*.so``) before source files of the same name, and fec-mm's
``tools/setup_env.sh`` removes this distribution before it installs full mmcv.
``tests/test_mmcv_lite_ops.py`` compares these kernels with golden outputs
of full mmcv's (``tools/record_mmcv_ops_golden.py``).
"""
import sys
from typing import Callable, NoReturn

import numpy as np
import torch
import torchvision

FULL_MMCV_COMMAND = 'make setup MMCV=full'
PROVIDED = ('nms', 'roi_align_forward', 'roi_align_backward', 'sigmoid_focal_loss_forward',
            'sigmoid_focal_loss_backward', 'get_compiler_version',
            'get_compiling_cuda_version')


class MissingMmcvOpError(NotImplementedError):
    """An mmcv kernel that only the compiled mmcv (``MMCV=full``) has."""


def _missing(kernel: str, detail: str = '') -> NoReturn:
    frame = sys._getframe(1)
    while frame.f_back is not None and frame.f_globals.get('__name__') == __name__:
        frame = frame.f_back
    caller = frame.f_globals.get('__name__', '?')  # the mmcv.ops module, say
    raise MissingMmcvOpError(
        f"mmcv kernel '{kernel}'{detail} (called from {caller}) is not available: this "
        'environment has mmcv-lite, whose mmcv._ext (fec-mm-mmcv-ops) implements only nms, '
        "roi_align (pool_mode='avg') and sigmoid_focal_loss. Install full mmcv, compiled with "
        f'all its ops: `{FULL_MMCV_COMMAND}` in the fec-mm repository (README, "Full mmcv").')


def _missing_kernel(name: str) -> Callable[..., NoReturn]:
    def kernel(*args, **kwargs) -> NoReturn:
        _missing(name)

    kernel.__name__ = kernel.__qualname__ = name
    kernel.__doc__ = f'mmcv kernel {name}: only in full mmcv (raises MissingMmcvOpError).'
    return kernel


def __getattr__(name: str) -> Callable[..., NoReturn]:
    """Any other kernel name of mmcv: a function that raises a clear error.

    ``load_ext`` asserts that each kernel an ``mmcv.ops`` module lists exists,
    so ``import mmcv.ops`` works; the error comes when the kernel is called.
    """
    if name.startswith('_'):  # dunders etc.: the import system probes them
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    return _missing_kernel(name)


def get_compiler_version() -> str:
    return f'none (mmcv-lite; fec-mm-mmcv-ops on torchvision {torchvision.__version__})'


def get_compiling_cuda_version() -> str:
    return 'none (mmcv-lite; CUDA kernels of torchvision)'


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
        offset: int = 0) -> torch.Tensor:
    """mmcv's ``nms`` kernel: indices of the kept boxes, highest score first.

    Same steps as mmcv's kernel: mmcv's ``scores.sort`` (so ties fall as in
    mmcv), then torchvision's greedy suppression of every later box whose IoU
    with a kept one is above the threshold, which mmcv compares in float32.

    Args:
        boxes (Tensor): (N, 4) x1, y1, x2, y2.
        scores (Tensor): (N,).
        iou_threshold (float): IoU above which a box is suppressed.
        offset (int): 0 (width = x2 - x1) is the only one provided; mmcv's
            legacy 1 needs full mmcv.

    Returns:
        Tensor: (K,) int64 indices into ``boxes``.
    """
    if offset != 0:
        _missing('nms', f' with offset={offset}')
    if boxes.numel() == 0:
        return boxes.new_empty(0, dtype=torch.long)
    order = scores.sort(0, descending=True)[1]
    # Scores that keep this order through torchvision's own (stable) sort.
    rank = torch.arange(len(order), 0, -1, dtype=boxes.dtype, device=boxes.device)
    keep = torch.ops.torchvision.nms(boxes[order], rank, float(np.float32(iou_threshold)))
    return order[keep]


def roi_align_forward(input: torch.Tensor, rois: torch.Tensor, output: torch.Tensor,
                      argmax_y: torch.Tensor, argmax_x: torch.Tensor, aligned_height: int,
                      aligned_width: int, spatial_scale: float, sampling_ratio: int,
                      pool_mode: int, aligned: bool) -> None:
    """mmcv's ``roi_align_forward`` kernel, average pooling: fills ``output``.

    Args:
        input (Tensor): (B, C, H, W) features.
        rois (Tensor): (K, 5) batch index, x1, y1, x2, y2 in input pixels
            over ``spatial_scale``.
        output (Tensor): (K, C, aligned_height, aligned_width), written.
        argmax_y, argmax_x (Tensor): used by max pooling only.
        pool_mode (int): 1 (average) is the one provided; 0 (max) needs full mmcv.
        aligned (bool): shift the boxes by -0.5 pixel (mmdet's default).
    """
    _check_roi_align(rois, pool_mode, aligned, 'roi_align_forward')
    output.copy_(torch.ops.torchvision.roi_align(input, rois, spatial_scale, aligned_height,
                                                 aligned_width, sampling_ratio, aligned))


def roi_align_backward(grad_output: torch.Tensor, rois: torch.Tensor, argmax_y: torch.Tensor,
                       argmax_x: torch.Tensor, grad_input: torch.Tensor, aligned_height: int,
                       aligned_width: int, spatial_scale: float, sampling_ratio: int,
                       pool_mode: int, aligned: bool) -> None:
    """mmcv's ``roi_align_backward`` kernel: adds the input gradient to ``grad_input``."""
    _check_roi_align(rois, pool_mode, aligned, 'roi_align_backward')
    batch, channels, height, width = grad_input.shape
    grad_input += torch.ops.torchvision._roi_align_backward(
        grad_output, rois, spatial_scale, aligned_height, aligned_width, batch, channels,
        height, width, sampling_ratio, aligned)


def _check_roi_align(rois: torch.Tensor, pool_mode: int, aligned: bool, kernel: str) -> None:
    if pool_mode != 1:
        _missing(kernel, " with pool_mode='max'")
    # mmcv's CPU kernel refuses these boxes (its CUDA kernel does not check).
    if aligned and rois.device.type == 'cpu' and rois.numel() and (
            (rois[:, 3] < rois[:, 1]) | (rois[:, 4] < rois[:, 2])).any():
        raise RuntimeError('ROIs in ROIAlign cannot have non-negative size!')


def _focal_terms(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                 gamma: float, alpha: float, grad: bool) -> torch.Tensor:
    # The element-wise formulas of mmcv's sigmoid_focal_loss CUDA kernels, in
    # float32 also for half inputs (FLT_MIN, the clamp of the logs, is 0 in half).
    p = torch.sigmoid(input.float())
    log_p = p.clamp(min=torch.finfo(torch.float32).tiny).log()
    log_q = (1 - p).clamp(min=torch.finfo(torch.float32).tiny).log()
    if grad:
        term_p = (1 - p).pow(gamma) * (1 - p - gamma * p * log_p)
        term_n = p.pow(gamma) * (gamma * (1 - p) * log_q - p)
    else:
        term_p = (1 - p).pow(gamma) * log_p
        term_n = p.pow(gamma) * log_q
    classes = torch.arange(input.size(1), device=input.device)
    positive = target[:, None] == classes
    out = torch.where(positive, -alpha * term_p, -(1 - alpha) * term_n)
    if weight.numel():
        out = out * weight[target][:, None]
    return out


def sigmoid_focal_loss_forward(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                               output: torch.Tensor, gamma: float, alpha: float) -> None:
    """mmcv's ``sigmoid_focal_loss_forward``: element-wise loss into ``output``.

    Args:
        input (Tensor): (N, C) logits.
        target (Tensor): (N,) int64 class index, C for background.
        weight (Tensor): (C,) per-class weights, or empty.
        output (Tensor): (N, C), written.
    """
    with torch.no_grad():
        output.copy_(_focal_terms(input, target, weight, gamma, alpha, grad=False))


def sigmoid_focal_loss_backward(input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor,
                                grad_input: torch.Tensor, gamma: float, alpha: float) -> None:
    """mmcv's ``sigmoid_focal_loss_backward``: d loss / d input into ``grad_input``."""
    with torch.no_grad():
        grad_input.copy_(_focal_terms(input, target, weight, gamma, alpha, grad=True))
