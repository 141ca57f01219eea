"""What FEC and Context Clusters share as backbones: the stage module and the
freezing, training-mode and checkpointing conventions of mmpretrain backbones
(``frozen_stages``, ``norm_eval``, ``with_cp``)."""
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch import Tensor
from torch.nn.modules.batchnorm import _BatchNorm


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
