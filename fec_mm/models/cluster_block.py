"""The pre-norm residual cluster block of FEC (docs/notes/design.md §2) and of
Context Clusters (§7)."""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks import DropPath
from torch import Tensor

from ..ops import channel_mlp
from .cluster_encoder import ClusterEncoder
from .hooks import refuse_hooks


class ChannelsLastMlp(nn.Module):
    """Linear(C, r·C) -> act -> Linear(r·C, C) applied over the channels of a map.

    With the exact GELU (the default) it runs :func:`fec_mm.ops.channel_mlp`:
    ``ops_impl='reference'`` the plain PyTorch layers, any other the chunked,
    memory-lean implementation. Other activations use the plain layers.
    """

    def __init__(self, channels: int, hidden_channels: int, act_cfg: dict,
                 ops_impl: str = 'auto') -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, hidden_channels)
        self.act = build_activation_layer(act_cfg)
        self.fc2 = nn.Linear(hidden_channels, channels)
        self.impl = 'reference' if ops_impl == 'reference' else 'auto'
        self.fused = type(self.act) is nn.GELU and self.act.approximate == 'none'

    def forward(self, x: Tensor, scale: Optional[Tensor] = None) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W); ``scale`` (C,) multiplies the output
        through fc2's weights, so the scaled output is not saved for backward."""
        if self.fused:
            refuse_hooks(self, fc1=self.fc1, act=self.act, fc2=self.fc2)
        else:
            refuse_hooks(self, fc2=self.fc2)
        w2, b2 = self.fc2.weight, self.fc2.bias
        if scale is not None:
            w2, b2 = w2 * scale[:, None], b2 * scale
        if self.fused:
            return channel_mlp(x, self.fc1.weight, self.fc1.bias, w2, b2, impl=self.impl)
        return F.linear(self.act(self.fc1(x.permute(0, 2, 3, 1))), w2, b2).permute(0, 3, 1, 2)


class ClusterBlock(nn.Module):
    """x + DropPath(ls1 · Mixer(GN(x))), then x + DropPath(ls2 · MLP(GN(x))).

    Args:
        channels (int): C.
        heads (int): Heads of the mixer.
        head_dim (int): Channels per head.
        mlp_ratio (int): Hidden width of the MLP is ``mlp_ratio · C``.
        num_centers (int): Centers per side of each region.
        fold (int): Regions per side.
        drop_path (float): Drop-path rate of this block.
        layer_scale_init (float): Initial layer scale.
        norm_cfg (dict): Pre-norm config.
        act_cfg (dict): MLP activation config.
        ops_impl (str): Implementation of the clustering op.
        aggregation (str): Center update of the mixer: 'mean' (FEC) or
            'similarity' (Context Clusters).
        fp32_assignments (bool): Under autocast, the mixer clusters in
            float32. Default False.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, mlp_ratio: int,
                 num_centers: int, fold: int, drop_path: float = 0.,
                 layer_scale_init: float = 1e-5, norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU'), ops_impl: str = 'auto',
                 aggregation: str = 'mean', fp32_assignments: bool = False) -> None:
        super().__init__()
        self.norm1 = build_norm_layer(norm_cfg, channels)[1]
        self.token_mixer = ClusterEncoder(channels, heads, head_dim, num_centers, fold, ops_impl,
                                          aggregation, fp32_assignments)
        self.norm2 = build_norm_layer(norm_cfg, channels)[1]
        self.mlp = ChannelsLastMlp(channels, mlp_ratio * channels, act_cfg, ops_impl)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale_1 = nn.Parameter(torch.full((channels,), layer_scale_init))
        self.layer_scale_2 = nn.Parameter(torch.full((channels,), layer_scale_init))

    def forward(self, x: Tensor) -> Tensor:
        # The layer scales act through the last weights of the mixer and MLP.
        x = x + self.drop_path(self.token_mixer(self.norm1(x), scale=self.layer_scale_1))
        return x + self.drop_path(self.mlp(self.norm2(x), scale=self.layer_scale_2))
