"""FEC's ops in mmengine's FLOP counter (``mmengine.analysis``).

The ``get_flops.py`` tools of mmdet, mmseg and mmpretrain call
``mmengine.analysis.get_model_complexity_info``, an fvcore-style counter: it
traces the model with ``torch.jit`` and looks each graph node up by its op
name ('aten::addmm', ...) in a table of handles. The fused clustering ops
(``torch.ops.fec_mm.cluster_*_cpu`` / ``_triton``, what ``ops_impl='auto'``
runs) and the chunked MLP (``fec_mm.ops.channel_mlp``, an autograd Function,
node 'prim::PythonOp._ChunkedMlp') are not in that table, so they counted
zero: FEC-Small at 224² gave 0.414 GFLOPs with 'auto' against 1.366 with
'reference'.

:func:`register_flop_handles` (run on ``import fec_mm``) adds handles for
them to mmengine's default tables, so every counter built afterwards
(``FlopAnalyzer``, ``ActivationAnalyzer``, ``get_model_complexity_info``,
``flop_count``) counts them, with no change to how it is called. The counts
follow the reference implementation's matmuls, so every ``ops_impl`` gives the
same total (fvcore's convention: one multiply-add is one FLOP; element-wise
ops are not counted):

- cluster_assign / cluster_encode / cluster_pool on (R, N, d) points and
  (R, M, d) centers: the cosine-similarity matrix, R·M·N·d (the reference's
  ``bmm``). Normalisation, aggregation and dispatch are O(R·N·d) element-wise
  work, left out as fvcore leaves out ``aten::mul``/``aten::add``.
- channel_mlp on (B, C, H, W): its two products, B·H·W·(C·C_hidden +
  C_hidden·C_out) (the reference's two ``linear``), counted under 'linear'.

It also tells the counter that the MLP's ``fc1``/``act``/``fc2`` and the
mixer's ``proj`` are weight holders whose weights their parent applies (with
the layer scale folded in), so their FLOPs are counted in the parent and the
analyzer no longer warns that they were "never called".

``fec_mm.ops`` stays free of OpenMMLab imports: this registration lives here.
"""
import typing
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple, Union

import torch.nn as nn
from mmengine.analysis import FlopAnalyzer, parameter_count
from mmengine.analysis import complexity_analysis as _complexity
from mmengine.analysis import jit_analysis as _jit_analysis
from mmengine.analysis.jit_handles import get_shape
from mmengine.logging import MMLogger
from torch import Tensor

from ..models.cluster_block import ChannelsLastMlp
from ..models.cluster_encoder import ClusterEncoder
from ..models.cluster_pooling import ClusterPooling
from ..ops.library import IMPL_MODULES
from ..ops.mlp import _ChunkedMlp

CLUSTER_OPS = ('cluster_assign', 'cluster_encode', 'cluster_pool')
# Operator names (as FlopAnalyzer.by_operator() reports them) of the clustering
# steps: the similarity of the fused ops or of the reference's bmm, and the
# adaptive average pooling that makes the mixers' centers.
CLUSTERING_OPERATORS = frozenset(CLUSTER_OPS) | {'bmm', 'adaptive_avg_pool2d'}
# Children whose weights the parent module applies itself (fec_mm.models).
WEIGHT_HOLDERS: Dict[type, Tuple[str, ...]] = {
    ChannelsLastMlp: ('fc1', 'act', 'fc2'),
    ClusterEncoder: ('proj',),
}
CHUNKED_MLP_NODE = f'prim::PythonOp.{_ChunkedMlp.__name__}'


def cluster_op_flops(points_shape: List[int], centers_shape: List[int]) -> int:
    """FLOPs of one clustering op: the (R, M, N) cosine matrix over d channels.

    Args:
        points_shape (list[int]): (R, N, d).
        centers_shape (list[int]): (R, M, d).
    """
    R, N, d = points_shape
    return R * centers_shape[1] * N * d


def channel_mlp_flops(x_shape: List[int], w1_shape: List[int], w2_shape: List[int]) -> int:
    """FLOPs of ``channel_mlp`` on a (B, C, H, W) map: its two products."""
    B, _, H, W = x_shape
    return B * H * W * (w1_shape[0] * w1_shape[1] + w2_shape[0] * w2_shape[1])


def _shapes(values: List[Any], count: int) -> List[List[int]]:
    shapes = [get_shape(v) for v in values[:count]]
    if any(s is None for s in shapes):
        raise ValueError('FEC FLOP handle: the trace lost the input shapes of a clustering op')
    return shapes


def _cluster_shapes(op: str, inputs: List[Any]) -> Tuple[List[int], List[int]]:
    """(points, centers) shapes: assign takes (points, centers), encode and
    pool (points, values, centers, value_centers, ...)."""
    if op == 'cluster_assign':
        points, centers = _shapes(inputs, 2)
    else:
        points, _, centers = _shapes(inputs, 3)
    return points, centers


def _cluster_flop_handle(op: str) -> Callable:
    def handle(inputs: List[Any], outputs: List[Any]) -> typing.Counter[str]:
        return Counter({op: cluster_op_flops(*_cluster_shapes(op, inputs))})
    return handle


def _cluster_activation_handle(op: str) -> Callable:
    def handle(inputs: List[Any], outputs: List[Any]) -> int:
        # The reference's bmm outputs the (R, M, N) similarity matrix.
        (R, N, _), centers = _cluster_shapes(op, inputs)
        return R * centers[1] * N
    return handle


def _mlp_flop_handle(inputs: List[Any], outputs: List[Any]) -> typing.Counter[str]:
    x, w1, _, w2 = _shapes(inputs, 4)
    return Counter({'linear': channel_mlp_flops(x, w1, w2)})


def _mlp_activation_handle(inputs: List[Any], outputs: List[Any]) -> int:
    # The reference's two linears output the hidden and the output maps.
    x, w1, _, w2 = _shapes(inputs, 4)
    B, _, H, W = x
    return B * H * W * (w1[0] + w2[0])


def fused_op_names() -> List[str]:
    """Graph node names of every fused forward op (``fec_mm::cluster_encode_cpu``, ...)."""
    return [f'fec_mm::{op}_{impl}' for impl in IMPL_MODULES for op in CLUSTER_OPS]


def flop_handles() -> Dict[str, Callable]:
    """Node name -> FLOP handle for FEC's ops."""
    handles = {f'fec_mm::{op}_{impl}': _cluster_flop_handle(op)
               for impl in IMPL_MODULES for op in CLUSTER_OPS}
    handles[CHUNKED_MLP_NODE] = _mlp_flop_handle
    return handles


def activation_handles() -> Dict[str, Callable]:
    """Node name -> activation handle, matching what the reference ops output."""
    handles = {f'fec_mm::{op}_{impl}': _cluster_activation_handle(op)
                for impl in IMPL_MODULES for op in CLUSTER_OPS}
    handles[CHUNKED_MLP_NODE] = _mlp_activation_handle
    return handles


def _is_weight_holder(analysis: Any, mod_name: str) -> bool:
    parent_name, _, child = mod_name.rpartition('.')
    parent = analysis._named_modules.get(parent_name)
    return parent is not None and child in WEIGHT_HOLDERS.get(type(parent), ())


def register_flop_handles() -> None:
    """Add FEC's handles to mmengine's default FLOP and activation tables and
    mark FEC's weight-holder children as not meant to be called. Idempotent."""
    _complexity._DEFAULT_SUPPORTED_FLOP_OPS.update(flop_handles())
    _complexity._DEFAULT_SUPPORTED_ACT_OPS.update(activation_handles())
    cls = _jit_analysis.JitModelAnalysis
    original = getattr(cls, '_has_forward', None)
    if original is None:
        MMLogger.get_current_instance().warning(
            'fec_mm: mmengine.analysis has no JitModelAnalysis._has_forward; its '
            '"never called" warnings will list FEC MLP and mixer projections (their FLOPs '
            'are still counted, in the parent modules)')
        return
    if getattr(original, '_fec_weight_holders', False):
        return

    def _has_forward(self, mod_name: str) -> bool:
        return not _is_weight_holder(self, mod_name) and original(self, mod_name)

    _has_forward._fec_weight_holders = True
    cls._has_forward = _has_forward


@dataclass
class FlopCount:
    """What :func:`count_flops` measured (FLOPs = multiply-adds, fvcore's convention)."""
    flops: int
    clustering: int
    params: int
    by_operator: typing.Counter[str] = field(default_factory=Counter)
    unsupported: typing.Counter[str] = field(default_factory=Counter)

    @property
    def rest(self) -> int:
        return self.flops - self.clustering


def clustering_flops(analyzer: FlopAnalyzer, model: nn.Module) -> int:
    """FLOPs of the clustering steps: the clustering operators
    (:data:`CLUSTERING_OPERATORS`) run directly in a ClusterEncoder or
    ClusterPooling (its convolutions are the rest)."""
    by_module = analyzer.by_module_and_operator()
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, (ClusterEncoder, ClusterPooling)):
            total += sum(n for op, n in by_module[name].items() if op in CLUSTERING_OPERATORS)
    return total


def count_flops(model: nn.Module, inputs: Union[Tensor, Tuple[Any, ...]],
                warnings: bool = False) -> FlopCount:
    """Count ``model(*inputs)`` with mmengine's ``FlopAnalyzer``.

    Args:
        model (nn.Module): Any model; FEC inside it is split into clustering
            and the rest.
        inputs (Tensor | tuple): What the model's forward takes.
        warnings (bool): Let mmengine warn about unsupported operators and
            uncalled modules. Default False (they are in ``unsupported``).
    """
    analyzer = FlopAnalyzer(model, inputs)
    analyzer.unsupported_ops_warnings(warnings).uncalled_modules_warnings(warnings)
    analyzer.tracer_warnings('all' if warnings else 'none')
    return FlopCount(flops=int(analyzer.total()), clustering=clustering_flops(analyzer, model),
                     params=parameter_count(model)[''], by_operator=analyzer.by_operator(),
                     unsupported=analyzer.unsupported_ops())


class _TensorMode(nn.Module):
    """``model(inputs, data_samples, mode='tensor')`` as a one-input module,
    what the FLOP counter traces (the libraries' get_flops tools do the same
    by binding ``data_samples`` to ``forward``)."""

    def __init__(self, model: nn.Module, data_samples: Any) -> None:
        super().__init__()
        self.model = model
        self.data_samples = data_samples

    def forward(self, inputs: Tensor) -> Any:
        return self.model(inputs, self.data_samples, mode='tensor')


def _size_divisor(model: nn.Module) -> int:
    divisors = [m.size_divisor for m in model.modules() if hasattr(m, 'size_divisor')
                and isinstance(m.size_divisor, int)]
    return max(divisors, default=32)


def _data_samples(scope: str, shape: Tuple[int, int]) -> Any:
    """Data samples the model's tensor mode needs: mmdet's two-stage detectors
    read the image shape (RPN proposals); mmseg and mmpretrain need none."""
    if scope != 'mmdet':
        return None
    from mmdet.structures import DetDataSample
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                scale_factor=(1.0, 1.0))
    return [DetDataSample(metainfo=meta)]


def config_flops(cfg: Any, shape: Tuple[int, int]) -> Tuple[FlopCount, Tuple[int, int]]:
    """Build ``cfg.model`` (any mmdet/mmseg/mmpretrain config) and count one
    (1, 3, H, W) image in tensor mode.

    Args:
        cfg (mmengine.Config): Config with ``model`` and ``default_scope``.
        shape (tuple[int, int]): Input (H, W); padded up to the backbone's
            ``size_divisor`` as the data preprocessors do.

    Returns:
        tuple[FlopCount, tuple[int, int]]: the count and the padded (H, W).
    """
    import torch
    from mmengine.registry import MODELS, init_default_scope

    if len(shape) != 2 or not all(isinstance(s, int) and s > 0 for s in shape):
        raise ValueError(f'config_flops: shape must be two positive ints (H, W), got {shape!r}')
    if 'model' not in cfg:
        raise ValueError('config_flops: the config has no `model`')
    scope = cfg.get('default_scope', 'mmengine')
    init_default_scope(scope)
    model = MODELS.build(cfg.model)
    model.eval()  # not chained: some backbones' train() returns None
    div = _size_divisor(model)
    padded = tuple(-(-s // div) * div for s in shape)
    wrapped = _TensorMode(model, _data_samples(scope, padded))
    with torch.no_grad():
        count = count_flops(wrapped, (torch.randn(1, 3, *padded),))
    return count, padded
