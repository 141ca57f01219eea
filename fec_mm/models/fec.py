"""FEC: Feature Extraction with Clustering (Chen et al., CVPR 2024).

"Neural Clustering based Visual Representation Learning", arXiv 2403.17409.
One backbone class for every size and task; see ``docs/notes/design.md``.
"""
import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.registry import MODELS
from torch import Tensor

from .checkpoint import check_weights_fit, load_fec_checkpoint
from .cluster_backbone import ClusterBackbone, ClusterStage, IntOrSeq, _per_stage
from .cluster_block import ClusterBlock
from .cluster_pooling import ClusterPooling
from .coc_checkpoint import check_family


class PointReducer(nn.Module):
    """Input embedding (docs/notes/design.md §1): append the two position channels, then a
    4×4 stride-4 convolution."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels + 2, out_channels, 4, stride=4)

    def forward(self, x: Tensor) -> Tensor:
        B, _, H, W = x.shape
        rows = torch.arange(H, device=x.device, dtype=x.dtype) / (H - 1) - 0.5
        cols = torch.arange(W, device=x.device, dtype=x.dtype) / (W - 1) - 0.5
        pos = torch.stack(torch.meshgrid(rows, cols, indexing='ij'))
        return self.proj(torch.cat([x, pos.expand(B, -1, -1, -1)], dim=1))


def pad_to_divisor(images: Tensor, divisor: int, value: float = 0.) -> Tensor:
    """Pad (B, C, H, W) at the bottom and right to multiples of ``divisor``
    (as mmengine's data preprocessors pad, after normalisation)."""
    H, W = images.shape[-2:]
    pad_h, pad_w = -H % divisor, -W % divisor
    if pad_h or pad_w:
        images = F.pad(images, (0, pad_w, 0, pad_h), value=value)
    return images


@MODELS.register_module()
class FEC(ClusterBackbone):
    """FEC backbone.

    Registered in ``mmengine.registry.MODELS``, which the registries of
    mmpretrain, mmdet and mmseg fall back to, so ``dict(type='FEC')`` builds
    in all three after ``custom_imports=dict(imports=['fec_mm'])``.

    Args:
        arch (str | dict): 'small', 'base', 'large', or a dict with keys
            ``depths``, ``widths``, ``heads`` (4 ints each), ``head_dim`` and
            optionally ``mlp_ratios`` (default (8, 8, 4, 4)). Default 'small'.
        in_channels (int): Image channels; two position channels are
            appended. Default 3.
        num_centers (int | Sequence[int]): Centers per side of each region,
            per stage. Authors' settings: classification (4, 4, 2, 2),
            segmentation (10, 10, 5, 5), detection (7, 7, 7, 7).
            Default (4, 4, 2, 2).
        folds (int | Sequence[int]): Regions per side, per stage (the pooling
            into stage k uses stage k's fold). Detection: (2, 2, 1, 1).
            Default (1, 1, 1, 1).
        out_indices (int | Sequence[int]): Stages whose (normed) maps are
            returned; negatives count from the end. Default (0, 1, 2, 3).
        frozen_stages (int): Stages 0..frozen_stages (and the stem) are
            frozen; -1 freezes nothing. Default -1.
        drop_path_rate (float): Drop-path rate of the last block, growing
            linearly from 0. Default 0.
        layer_scale_init (float): Initial layer scale (finite). Default 1e-5.
        norm_cfg (dict): Norm of blocks, poolings and outputs. Default
            ``dict(type='GN', num_groups=1)``.
        act_cfg (dict): MLP activation. Default ``dict(type='GELU')``.
        norm_eval (bool): Keep BatchNorm layers (if ``norm_cfg`` makes any)
            in eval mode while training. Default False.
        with_cp (bool): Gradient checkpointing of each block. Default False.
        ops_impl (str): Implementation of the clustering ops: 'auto',
            'reference', 'cpu' or 'triton'. With 'reference' the block MLPs
            are the plain PyTorch layers too; with any other value they run
            the chunked, memory-lean :func:`fec_mm.ops.channel_mlp`.
            Default 'auto'.
        fp32_assignments (bool): Under autocast (bf16/fp16), compute every
            clustering layer's features, similarities, argmax and aggregation
            in float32, so the assignments do not flip from half-precision
            rounding there (docs/notes/low_precision.md); the rest of the
            model stays in the autocast dtype. No effect without autocast.
            Default False.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...,
            prefix=None)`` loads our checkpoints and the authors' layout
            (see :func:`fec_mm.models.checkpoint.load_fec_checkpoint`);
            any other mmengine init config is applied by ``init_weights()``
            over the default below.

    Default initialisation, as in the authors' code (docs/notes/design.md §2), so that
    from-scratch training starts from the paper's distribution: every
    ``nn.Linear`` (the block MLPs) gets a truncated normal with std 0.02 and
    zero bias; every ``nn.Conv2d`` (stem, mixer ``f``/``v``/``proj``, pooling
    ``conv_f``/``conv_v``/``conv_skip``) keeps PyTorch's default
    (Kaiming-uniform with a=√5, bias uniform in ±1/√fan_in). This matters most
    for the poolings' ``conv_f``: it never trains, so its initial weights are
    the grouping the model keeps. GroupNorms start at weight 1, bias 0; layer
    scales at ``layer_scale_init``; the mixers' α at 1 and β at 0.
    """

    transitions = 'cluster_poolings'
    arch_settings: Dict[str, dict] = {
        'small': dict(depths=(3, 4, 5, 2), widths=(32, 64, 196, 320),
                      heads=(4, 4, 8, 8), head_dim=24),
        'base': dict(depths=(2, 2, 6, 2), widths=(64, 128, 320, 512),
                     heads=(4, 4, 8, 8), head_dim=32),
        'large': dict(depths=(4, 4, 12, 4), widths=(64, 128, 320, 512),
                      heads=(6, 6, 12, 12), head_dim=32),
    }

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 in_channels: int = 3,
                 num_centers: IntOrSeq = (4, 4, 2, 2),
                 folds: IntOrSeq = (1, 1, 1, 1),
                 out_indices: IntOrSeq = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 drop_path_rate: float = 0.,
                 layer_scale_init: float = 1e-5,
                 norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU'),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 ops_impl: str = 'auto',
                 fp32_assignments: bool = False,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch_name = arch if isinstance(arch, str) else 'custom'
        self.arch = self._parse_arch(arch)
        self._check_common(drop_path_rate, layer_scale_init, frozen_stages, ops_impl)
        self.num_centers = _per_stage('num_centers', num_centers, 'FEC')
        self.folds = _per_stage('folds', folds, 'FEC')
        self.out_indices = self._parse_out_indices(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.in_channels = in_channels
        # Stages after the last requested output would hold unused parameters.
        self.num_stages = max(self.out_indices) + 1
        self.size_divisor = math.lcm(32, *(4 * 2**k * fold for k, fold in enumerate(self.folds)))

        depths, widths = self.arch['depths'], self.arch['widths']
        self.patch_embed = PointReducer(in_channels, widths[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.cluster_poolings = nn.ModuleList()
        for k in range(self.num_stages):
            if k > 0:
                self.cluster_poolings.append(ClusterPooling(
                    widths[k - 1], widths[k], self.folds[k], norm_cfg, ops_impl,
                    fp32_assignments))
            first = sum(depths[:k])
            self.stages.append(ClusterStage(*[
                ClusterBlock(widths[k], self.arch['heads'][k], self.arch['head_dim'],
                             self.arch['mlp_ratios'][k], self.num_centers[k], self.folds[k],
                             rates[first + j], layer_scale_init, norm_cfg, act_cfg, ops_impl,
                             fp32_assignments=fp32_assignments)
                for j in range(depths[k])], with_cp=with_cp))
        for k in self.out_indices:
            self.add_module(f'norm{k}', build_norm_layer(norm_cfg, widths[k])[1])
        self.apply(self._init_default)
        self._freeze_stages()

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', ...)`` through the FEC
        loader (authors' layout, key report); other init_cfgs as mmengine."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            load_fec_checkpoint(self, self.init_cfg['checkpoint'],
                                prefix=self.init_cfg.get('prefix'))
            self._is_init = True
            return
        super().init_weights()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # Called by torch's and mmengine's load_state_dict (so by every
        # library's load_checkpoint): mmengine only warns about mis-shaped
        # tensors and would leave a model of another arch at random weights.
        check_family('FEC', [k[len(prefix):] for k in state_dict if k.startswith(prefix)])
        check_weights_fit(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Args:
            x (Tensor): (B, in_channels, H, W), any H and W.

        Sizes that are not multiples of ``self.size_divisor`` (the 4 strided
        stages times the folds) are padded with zeros at the bottom and right,
        as a data preprocessor with ``pad_size_divisor`` would (so the result
        is the same as padding first), and every output is cropped to the
        stride-exact size: the model's outputs for H×W are those of the padded
        input without the rows and columns that only see padding. Divisible
        sizes run unchanged.

        Returns:
            tuple[Tensor]: for each index in ``out_indices``, the normed map of
            that stage, (B, widths[k], ⌈H / 2^(k+2)⌉, ⌈W / 2^(k+2)⌉).
        """
        self._check_input(x)
        H, W = x.shape[-2:]
        padded = bool(H % self.size_divisor or W % self.size_divisor)
        x = self.patch_embed(pad_to_divisor(x, self.size_divisor))
        outs = []
        for k in range(self.num_stages):
            if k > 0:
                x = self.cluster_poolings[k - 1](x)
            x = self.stages[k](x)
            if k in self.out_indices:
                out = getattr(self, f'norm{k}')(x)
                if padded:
                    stride = 4 * 2**k
                    out = out[..., :-(-H // stride), :-(-W // stride)]
                outs.append(out)
        return tuple(outs)
