"""What FEC and Context Clusters share as backbones: the stage module, the
argument checks (arch presets, per-stage values, ``out_indices``) and the
freezing, training-mode and checkpointing conventions of mmpretrain backbones
(``frozen_stages``, ``norm_eval``, ``with_cp``)."""
import math
from typing import Dict, Sequence, Tuple, Union

import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from mmengine.model.weight_init import trunc_normal_
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm

from ..ops import IMPLS

NUM_STAGES = 4
IntOrSeq = Union[int, Sequence[int]]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _per_stage(name: str, value: IntOrSeq, owner: str) -> Tuple[int, ...]:
    """``value`` as one positive int per stage (an int is used for all)."""
    if _is_int(value):
        values = (value,) * NUM_STAGES
    elif isinstance(value, (list, tuple)):
        values = tuple(value)
    else:
        values = ()
    if len(values) != NUM_STAGES or not all(_is_int(v) and v > 0 for v in values):
        raise ValueError(f'{owner}: {name} must be a positive int or {NUM_STAGES} positive ints '
                         f'(one per stage), got {value!r}')
    return values


class ClusterStage(nn.Sequential):
    """The cluster blocks of one stage, run as one module.

    A ``Sequential`` of blocks (so state-dict keys stay
    ``stages.{k}.{j}.*``) that the backbone calls as a whole: hooks on
    ``backbone.stages.{k}`` fire (Grad-CAM targets, feature extractors), and
    gradient checkpointing of each block (``with_cp``) happens here.
    """

    def __init__(self, *blocks: nn.Module, with_cp: bool = False) -> None:
        super().__init__(*blocks)
        self.with_cp = with_cp

    def forward(self, x: Tensor) -> Tensor:
        for block in self:
            if self.with_cp and self.training and x.requires_grad:
                x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x


class ClusterBackbone(BaseModule):
    """Base of :class:`~fec_mm.models.FEC` and
    :class:`~fec_mm.models.ContextCluster`.

    Subclasses build ``patch_embed``, ``stages`` (a ``ModuleList`` of
    :class:`ClusterStage`), the layers between stages in the ``ModuleList``
    named by :attr:`transitions` and the output norms ``norm{k}``, and set
    ``frozen_stages``, ``norm_eval``, ``num_stages`` and ``out_indices``.
    """

    #: Attribute holding the layer between stage k-1 and k at index k-1.
    transitions = ''
    #: The presets (``arch='name'``) and the defaults of a custom arch dict.
    arch_settings: Dict[str, dict] = {}
    arch_defaults: Dict[str, object] = dict(mlp_ratios=(8, 8, 4, 4))

    @property
    def _name(self) -> str:
        return type(self).__name__

    def _parse_arch(self, arch: Union[str, dict]) -> dict:
        """A preset name or a custom dict, checked, with per-stage tuples."""
        if isinstance(arch, str):
            if arch not in self.arch_settings:
                raise ValueError(f'{self._name}: unknown arch {arch!r}; valid ones are '
                                 f'{sorted(self.arch_settings)} or a dict with keys '
                                 'depths, widths, heads, head_dim')
            arch = self.arch_settings[arch]
        if not isinstance(arch, dict):
            raise TypeError(f'{self._name}: arch must be a str or dict, got '
                            f'{type(arch).__name__}')
        missing = {'depths', 'widths', 'heads', 'head_dim'} - set(arch)
        if missing:
            raise ValueError(f'{self._name}: custom arch misses {sorted(missing)}')
        arch = {**self.arch_defaults, **arch}
        for key in ('depths', 'widths', 'heads', 'mlp_ratios'):
            arch[key] = _per_stage(f'arch[{key!r}]', arch[key], self._name)
        return arch

    def _parse_out_indices(self, out_indices: IntOrSeq) -> Tuple[int, ...]:
        out_indices = (out_indices,) if isinstance(out_indices, int) else tuple(out_indices)
        if not out_indices:
            raise ValueError(f'{self._name}: out_indices is empty')
        parsed = []
        for i in out_indices:
            if not -NUM_STAGES <= i < NUM_STAGES:
                raise ValueError(f'{self._name}: out_indices must be in [-{NUM_STAGES}, '
                                 f'{NUM_STAGES - 1}], got {i}')
            parsed.append(i % NUM_STAGES)
        return tuple(sorted(set(parsed)))

    def _check_common(self, drop_path_rate: float, layer_scale_init: float,
                      frozen_stages: int, ops_impl: str) -> None:
        """The checks of the arguments both backbones take."""
        if (isinstance(drop_path_rate, bool) or not isinstance(drop_path_rate, (int, float))
                or not 0 <= drop_path_rate < 1):
            raise ValueError(f'{self._name}: drop_path_rate must be in [0, 1), got '
                             f'{drop_path_rate!r} (1 drops every residual branch, so no '
                             'block would learn)')
        if (isinstance(layer_scale_init, bool) or not isinstance(layer_scale_init, (int, float))
                or not math.isfinite(layer_scale_init)):
            raise ValueError(f'{self._name}: layer_scale_init must be a finite number, got '
                             f'{layer_scale_init!r} (a non-finite scale makes every feature '
                             'NaN or infinite)')
        if not -1 <= frozen_stages < NUM_STAGES:
            raise ValueError(f'{self._name}: frozen_stages must be in [-1, {NUM_STAGES - 1}], '
                             f'got {frozen_stages}')
        if ops_impl not in IMPLS:
            raise ValueError(f'{self._name}: unknown ops_impl {ops_impl!r}; valid ones are '
                             f'{IMPLS}')

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f'{self._name} expects images of shape (B, {self.in_channels}, '
                             f'H, W), got {tuple(x.shape)}')

    @staticmethod
    def _init_default(m: nn.Module) -> None:
        # The authors' recipe (docs/notes/design.md §2, "Initialisation"), the
        # same in FEC and CoC: linears only; every Conv2d keeps PyTorch's
        # default, which FEC's never-trained pooling conv_f then keeps for the
        # life of the model.
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @property
    def with_cp(self) -> bool:
        """Gradient checkpointing of each block (held by the stages)."""
        return all(stage.with_cp for stage in self.stages)

    @with_cp.setter
    def with_cp(self, value: bool) -> None:
        for stage in self.stages:
            stage.with_cp = value

    def _freeze_stages(self) -> None:
        if self.frozen_stages < 0:
            return
        frozen = [self.patch_embed]
        for k in range(min(self.frozen_stages + 1, self.num_stages)):
            frozen.append(self.stages[k])
            if k > 0:
                frozen.append(getattr(self, self.transitions)[k - 1])
            if k in self.out_indices:
                frozen.append(getattr(self, f'norm{k}'))
        for module in frozen:
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'ClusterBackbone':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self
