"""Context Clusters (CoC): "Image as Set of Points" (Ma et al., ICLR 2023).

FEC's parent (docs/notes/design.md §7), on the same ops: the same point
reducer and cluster block (:class:`~fec_mm.models.cluster_block.ClusterBlock`)
with the similarity-weighted center update (``aggregation='similarity'`` of
:func:`fec_mm.ops.cluster_encode`, the authors' code after their fix 3ccb0b6),
and a plain 3×3 stride-2 convolution between stages instead of FEC's cluster
pooling.
"""
import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
from mmcv.cnn import build_norm_layer
from mmengine.logging import MMLogger
from mmengine.registry import MODELS
from torch import Tensor

from .checkpoint import read_state_dict
from .cluster_backbone import ClusterBackbone, ClusterStage, IntOrSeq, _per_stage
from .cluster_block import ClusterBlock
from .coc_checkpoint import check_family, convert_coc_state_dict, is_coc_reference_layout
from .fec import PointReducer

_NAME = 'ContextCluster'


@MODELS.register_module()
class ContextCluster(ClusterBackbone):
    """Context Clusters backbone.

    Registered in ``mmengine.registry.MODELS`` like :class:`~fec_mm.models.FEC`,
    so ``dict(type='ContextCluster')`` builds in mmpretrain, mmdet and mmseg
    after ``custom_imports=dict(imports=['fec_mm'])``.

    Args:
        arch (str | dict): 'tiny', 'tiny_plain', 'small', 'medium' (the
            authors' ``coc_*`` presets), or a dict with keys ``depths``,
            ``widths``, ``heads`` (4 ints each), ``head_dim`` and optionally
            ``mlp_ratios`` (default (8, 8, 4, 4)), ``num_centers`` and
            ``folds``. Default 'small'.
        in_channels (int): Image channels; two position channels are
            appended. Default 3.
        num_centers (int | Sequence[int], optional): Centers per side of each
            region, per stage. None: the preset's (2 for tiny/small/medium,
            (4, 4, 2, 2) for tiny_plain). The authors' detection and
            segmentation models use 2, 5 or 7 ("CoC-small-4/25/49").
        folds (int | Sequence[int], optional): Regions per side, per stage.
            None: the preset's ((8, 4, 2, 1), or 1 for tiny_plain).
        out_indices (int | Sequence[int]): Stages whose (normed) maps are
            returned; negatives count from the end. Default (0, 1, 2, 3).
        frozen_stages (int): Stages 0..frozen_stages (with the stem and the
            downsampling into them) are frozen; -1 freezes nothing. Default -1.
        drop_path_rate (float): Drop-path rate of the last block, growing
            linearly from 0. Default 0.
        layer_scale_init (float): Initial layer scale. Default 1e-5.
        norm_cfg (dict): Norm of blocks and outputs. Default
            ``dict(type='GN', num_groups=1)``.
        act_cfg (dict): MLP activation. Default ``dict(type='GELU')``.
        norm_eval (bool): Keep BatchNorm layers in eval mode while training.
            Default False.
        with_cp (bool): Gradient checkpointing of each block. Default False.
        ops_impl (str): Implementation of the clustering op: 'auto',
            'reference', 'cpu' or 'triton' (as FEC's). Default 'auto'.
        init_cfg (dict, optional): ``dict(type='Pretrained', checkpoint=...,
            prefix=None)`` loads our checkpoints and the authors' files as
            released (1×1-conv MLPs reshaped, reported); other init configs
            as mmengine, over the default below.

    Default initialisation, as the authors' ``cls_init_weights``: every
    ``nn.Linear`` a truncated normal (std 0.02) and zero bias, every
    ``nn.Conv2d`` PyTorch's default; GroupNorms 1/0, layer scales
    ``layer_scale_init``, α = 1, β = 0.
    """

    transitions = 'downsamples'
    arch_settings: Dict[str, dict] = {
        'tiny': dict(depths=(3, 4, 5, 2), widths=(32, 64, 196, 320), heads=(4, 4, 8, 8),
                     head_dim=24, num_centers=2, folds=(8, 4, 2, 1)),
        'tiny_plain': dict(depths=(3, 4, 5, 2), widths=(32, 64, 196, 320), heads=(4, 4, 8, 8),
                           head_dim=24, num_centers=(4, 4, 2, 2), folds=1),
        'small': dict(depths=(2, 2, 6, 2), widths=(64, 128, 320, 512), heads=(4, 4, 8, 8),
                      head_dim=32, num_centers=2, folds=(8, 4, 2, 1)),
        'medium': dict(depths=(4, 4, 12, 4), widths=(64, 128, 320, 512),
                       heads=(6, 6, 12, 12), head_dim=32, num_centers=2, folds=(8, 4, 2, 1)),
    }
    arch_defaults = dict(mlp_ratios=(8, 8, 4, 4), num_centers=2, folds=1)

    def __init__(self,
                 arch: Union[str, dict] = 'small',
                 in_channels: int = 3,
                 num_centers: Optional[IntOrSeq] = None,
                 folds: Optional[IntOrSeq] = None,
                 out_indices: IntOrSeq = (0, 1, 2, 3),
                 frozen_stages: int = -1,
                 drop_path_rate: float = 0.,
                 layer_scale_init: float = 1e-5,
                 norm_cfg: dict = dict(type='GN', num_groups=1),
                 act_cfg: dict = dict(type='GELU'),
                 norm_eval: bool = False,
                 with_cp: bool = False,
                 ops_impl: str = 'auto',
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.arch_name = arch if isinstance(arch, str) else 'custom'
        self.arch = self._parse_arch(arch)
        self._check_common(drop_path_rate, layer_scale_init, frozen_stages, ops_impl)
        self.num_centers = _per_stage('num_centers', self.arch['num_centers']
                                      if num_centers is None else num_centers, _NAME)
        self.folds = _per_stage('folds', self.arch['folds'] if folds is None else folds, _NAME)
        self.out_indices = self._parse_out_indices(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.in_channels = in_channels
        self.num_stages = max(self.out_indices) + 1
        # Stage k's map is (H/4)/2^k; its fold must divide it (docs/notes/design.md §7).
        self.size_divisor = math.lcm(4, *(4 * 2**k * f for k, f in enumerate(self.folds)
                                          if k < self.num_stages and f > 1))

        depths, widths = self.arch['depths'], self.arch['widths']
        self.patch_embed = PointReducer(in_channels, widths[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        for k in range(self.num_stages):
            if k > 0:
                self.downsamples.append(nn.Conv2d(widths[k - 1], widths[k], 3, stride=2,
                                                  padding=1))
            first = sum(depths[:k])
            self.stages.append(ClusterStage(*[
                ClusterBlock(widths[k], self.arch['heads'][k], self.arch['head_dim'],
                             self.arch['mlp_ratios'][k], self.num_centers[k], self.folds[k],
                             rates[first + j], layer_scale_init, norm_cfg, act_cfg, ops_impl,
                             aggregation='similarity')
                for j in range(depths[k])], with_cp=with_cp))
        for k in self.out_indices:
            self.add_module(f'norm{k}', build_norm_layer(norm_cfg, widths[k])[1])
        self.apply(self._init_default)
        self._freeze_stages()

    def init_weights(self) -> None:
        """Load ``init_cfg=dict(type='Pretrained', ...)`` (our files and the
        authors', with a key report); other init_cfgs as mmengine."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            self.load_checkpoint(self.init_cfg['checkpoint'], self.init_cfg.get('prefix'))
            self._is_init = True
            return
        super().init_weights()

    def load_checkpoint(self, filename: str, prefix: Optional[str] = None) -> None:
        """Load the backbone weights of a checkpoint file (ours or the authors':
        classification, Mask R-CNN or Semantic FPN), logging what did not match.

        Args:
            filename (str): Path or URL.
            prefix (str, optional): Key prefix of the backbone; None: 'backbone.'
                when keys have it, else none.
        """
        state_dict = read_state_dict(filename)
        if prefix is None:
            prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else ''
        state_dict = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        check_family(_NAME, state_dict, filename)
        own = self.state_dict()
        result = self.load_state_dict(state_dict, strict=False)
        logger = MMLogger.get_current_instance()
        logger.info(f'{_NAME}: loaded {len(own) - len(result.missing_keys)}/{len(own)} '
                    f'tensors from {filename}')
        if result.missing_keys:
            logger.warning(f'{_NAME}: missing keys in {filename} (left at their init): '
                           f'{", ".join(result.missing_keys)}')
        if result.unexpected_keys:
            logger.warning(f'{_NAME}: unexpected keys in {filename} (ignored): '
                           f'{", ".join(result.unexpected_keys)}')

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # Every loader (torch's, mmengine's, the libraries' load_from) comes
        # here: the authors' layout is converted in place, the other family
        # and other archs are refused (mmengine only warns about shapes).
        keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
        check_family(_NAME, keys)
        if is_coc_reference_layout(keys):
            converted, reshaped = convert_coc_state_dict(
                {k: state_dict.pop(k) for k in list(state_dict) if k.startswith(prefix)}, prefix)
            state_dict.update(converted)
            logger = MMLogger.get_current_instance()
            logger.info(f"{_NAME}: converted {len(converted)} tensors from the authors' "
                        'layout (network.*)')
            if reshaped:
                logger.warning(f'{_NAME}: {len(reshaped)} MLP weights were 1x1 convolutions '
                               '(the authors\' older dense checkpoints, their issue #31) and '
                               'were reshaped to nn.Linear (out, in), e.g. '
                               f'{reshaped[0]}')
        self._check_shapes(state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _check_shapes(self, state_dict, prefix: str) -> None:
        own = {prefix + k: v for k, v in self.state_dict().items()}
        bad = [f'{k}: {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}'
               for k in state_dict if k in own and state_dict[k].shape != own[k].shape]
        if bad:
            raise ValueError(f"{_NAME}(arch='{self.arch_name}') cannot take these weights: "
                             f'{len(bad)} tensors have other shapes (checkpoint vs model), '
                             f'e.g. {bad[:3]}; a checkpoint of another arch?')

    def _check_input(self, x: Tensor) -> None:
        super()._check_input(x)
        H, W = x.shape[-2:]
        if H % self.size_divisor or W % self.size_divisor:
            pad = (-H % self.size_divisor, -W % self.size_divisor)
            raise ValueError(
                f'{_NAME}: region folds {self.folds} do not divide the feature maps of a '
                f'{H}x{W} input (stage k is (H/4)/2^k, cut into fold_k x fold_k regions): '
                f'height and width must be divisible by {self.size_divisor}. Pad the input '
                f'(here by {pad[0]} rows and {pad[1]} columns), e.g. '
                f'size_divisor={self.size_divisor} in the data preprocessor.')

    def forward(self, x: Tensor) -> Tuple[Tensor, ...]:
        """Args:
            x (Tensor): (B, in_channels, H, W), H and W divisible by
                ``self.size_divisor``.

        Returns:
            tuple[Tensor]: for each index in ``out_indices``, the normed map of
            that stage, (B, widths[k], H / 2^(k+2), W / 2^(k+2)).
        """
        self._check_input(x)
        x = self.patch_embed(x)
        outs = []
        for k in range(self.num_stages):
            if k > 0:
                x = self.downsamples[k - 1](x)
            x = self.stages[k](x)
            if k in self.out_indices:
                outs.append(getattr(self, f'norm{k}')(x))
        return tuple(outs)

