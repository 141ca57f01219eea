"""Modules swapped in while exporting: the same maths, exported right.

:func:`for_export` deep-copies a module and replaces

- every ``nn.GroupNorm`` by :class:`ExportGroupNorm`, and
- every mmseg ``Upsample`` with an integer scale factor by
  :class:`ExportUpsample`.

**GroupNorm.** ONNX Runtime's CPU InstanceNormalization (what ``nn.GroupNorm`` exports to)
and ReduceMean sum a whole group in one float32 pass. FEC normalises with
one group (``GN``, ``num_groups=1``), so at the detection shape a group is
C·H·W = 32·200·336 = 2.2M values and the normalised map is off by up to
2-4e-4 (measured: 1.9e-4 for InstanceNormalization, 4.4e-4 for a two-pass
ReduceMean, against 5e-7 for PyTorch in float32, both vs float64). Averaging
one axis at a time (W, then H, then the group's channels; equal-size
groups, so the mean of means is the mean) keeps every sum short: 1.2e-6.

**mmseg Upsample** (Semantic FPN's scale heads) computes its output size as
``int(H * scale_factor)``: torch.export turns that float product into a
constant, so an export with dynamic H, W resized every other shape to the
traced one, silently (measured: errors ~1 at another shape, the final
``resize`` hid the shape). With an integer factor, ``H * k`` stays symbolic.
"""
import copy
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


def _mean_per_group(y: Tensor) -> Tensor:
    """(B, G, C/G, H, W) -> (B, G, 1, 1, 1), one axis at a time."""
    return y.mean(-1, keepdim=True).mean(-2, keepdim=True).mean(-3, keepdim=True)


class ExportGroupNorm(nn.Module):
    """``nn.GroupNorm`` (sharing its parameters) with axis-by-axis means, for
    4-D inputs; other inputs go through ``F.group_norm``."""

    def __init__(self, norm: nn.GroupNorm) -> None:
        super().__init__()
        self.num_groups = norm.num_groups
        self.eps = norm.eps
        self.weight = norm.weight
        self.bias = norm.bias

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        B, C, H, W = x.shape
        y = x.reshape(B, self.num_groups, C // self.num_groups, H, W)
        centred = y - _mean_per_group(y)
        var = _mean_per_group(centred * centred)  # two-pass: no cancellation
        y = (centred / torch.sqrt(var + self.eps)).reshape(B, C, H, W)
        if self.weight is not None:
            y = y * self.weight.view(1, C, 1, 1) + self.bias.view(1, C, 1, 1)
        return y


def _integer_factors(scale_factor) -> Optional[tuple]:
    factors = scale_factor if isinstance(scale_factor, tuple) else (scale_factor,) * 2
    if any(f is None or float(f) != int(f) or f < 1 for f in factors):
        return None
    return tuple(int(f) for f in factors)


class ExportUpsample(nn.Module):
    """mmseg's ``Upsample`` with an integer ``scale_factor``: output size
    ``(H·k_h, W·k_w)`` in integer arithmetic (what ``int(H·k)`` gives)."""

    def __init__(self, upsample: nn.Module) -> None:
        super().__init__()
        self.factors = _integer_factors(upsample.scale_factor)
        self.mode = upsample.mode
        self.align_corners = upsample.align_corners

    def forward(self, x: Tensor) -> Tensor:
        size = (x.shape[-2] * self.factors[0], x.shape[-1] * self.factors[1])
        return F.interpolate(x, size, None, self.mode, self.align_corners)


def _mmseg_upsample():
    try:
        from mmseg.models.utils import Upsample
    except ImportError:
        return None
    return Upsample


def _replacement(child: nn.Module, upsample_cls) -> Optional[nn.Module]:
    if isinstance(child, nn.GroupNorm):
        return ExportGroupNorm(child)
    if (upsample_cls is not None and isinstance(child, upsample_cls) and not child.size
            and _integer_factors(child.scale_factor) is not None):
        return ExportUpsample(child)
    return None


def for_export(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with the replacements above (``module``
    itself is left as it is)."""
    module = copy.deepcopy(module)
    upsample_cls = _mmseg_upsample()
    top = _replacement(module, upsample_cls)
    if top is not None:
        return top
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            new = _replacement(child, upsample_cls)
            if new is not None:
                setattr(parent, name, new)
    return module
