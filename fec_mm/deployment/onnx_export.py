"""Export a module to ONNX with torch's dynamo exporter, check and save the graph.

``torch.onnx.export(..., dynamo=True)`` (torch's recommended path since 2.9)
with opset >= 18. While it traces, the clustering ops and the center pooling
run their export formulation (:mod:`fec_mm.ops.export`), so the graph holds
only standard ONNX ops; :func:`check_standard_ops` proves it for every export.
Two kinds of module are swapped for exporting (:mod:`fec_mm.deployment.rewrites`):
GroupNorms (ONNX Runtime's one-pass float32 sums over FEC's one-group norms
lose ~1e-4 at detection shapes) and mmseg's integer-factor Upsample (its
float size arithmetic became a constant in dynamic-shape exports).
"""
import os
import os.path as osp
import tempfile
import warnings
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch import Tensor

from ..checkpoints.atomic_save import fsync_replace
from ..outputs import default_file_mode
from .rewrites import for_export

MIN_OPSET = 18
DEFAULT_OPSET = 18

# Standard ONNX ops (default domain) that runtimes broadly implement: what
# FEC backbones, FPN, Semantic FPN / UPerNet heads and linear heads export to.
# No Scatter* (reductions are rejected by TensorRT's parser and limited to
# float types in ONNX Runtime's CPU kernels), no Loop / If, no custom domain.
ALLOWED_OPS = frozenset({
    'Abs', 'Add', 'And', 'ArgMax', 'AveragePool', 'BatchNormalization', 'Cast', 'CastLike',
    'Ceil', 'Clip', 'Concat', 'Constant', 'ConstantOfShape', 'Conv', 'Div', 'Equal', 'Erf',
    'Exp', 'Expand', 'Flatten', 'Floor', 'Gather', 'GatherElements', 'Gemm',
    'GlobalAveragePool', 'Greater', 'GreaterOrEqual', 'GroupNormalization', 'Identity',
    'InstanceNormalization', 'LayerNormalization', 'Less', 'LessOrEqual', 'MatMul', 'Max',
    'MaxPool', 'Min', 'Mod', 'Mul', 'Neg', 'Not', 'Or', 'Pad', 'Pow', 'Range', 'Reciprocal',
    'ReduceL2', 'ReduceMax', 'ReduceMean', 'ReduceSum', 'Relu', 'Reshape', 'Resize', 'Shape',
    'Sigmoid', 'Slice', 'Softmax', 'Split', 'Sqrt', 'Squeeze', 'Sub', 'Tanh', 'Transpose',
    'Unsqueeze', 'Where',
})


class ExportError(RuntimeError):
    """The exporter failed or produced a graph outside :data:`ALLOWED_OPS`."""


def check_opset(opset: int) -> None:
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ValueError(f'opset must be an int >= {MIN_OPSET} (the dynamo exporter\'s '
                         f'range), got {opset!r}')


def dynamic_shapes_for(example: Tensor, dynamic_batch: bool, dynamic_shape: bool,
                       divisor: int) -> Optional[Tuple[Dict[int, object]]]:
    """``dynamic_shapes`` for ``torch.export``: batch free, and H, W free
    multiples of ``divisor`` (what the backbone accepts)."""
    if not (dynamic_batch or dynamic_shape):
        return None
    from torch.export import Dim
    dims: Dict[int, object] = {}
    if dynamic_batch:
        dims[0] = Dim('batch', min=1, max=1024)
    if dynamic_shape:
        dims[2] = divisor * Dim('height_blocks', min=1, max=4096 // divisor)
        dims[3] = divisor * Dim('width_blocks', min=1, max=4096 // divisor)
    return (dims,)


def tracing_example(example: Tensor, dynamic_batch: bool, dynamic_shape: bool,
                    divisor: int) -> Tensor:
    """The example to trace with: torch.export specialises sizes 0 and 1, so a
    dynamic dimension is traced at >= 2 (batch 2, H and W of >= 2 divisors)."""
    B, C, H, W = example.shape
    if dynamic_batch:
        B = max(B, 2)
    if dynamic_shape:
        H, W = max(H, 2 * divisor), max(W, 2 * divisor)
    if (B, H, W) == tuple(example.shape[i] for i in (0, 2, 3)):
        return example
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0),
                       dtype=example.dtype)


def export_onnx(module: nn.Module, example: Tensor, opset: int = DEFAULT_OPSET,
                dynamic_batch: bool = False, dynamic_shape: bool = False,
                divisor: int = 1, output_names: Optional[Sequence[str]] = None):
    """Export ``module(example)`` with the dynamo exporter.

    Returns:
        onnx.ModelProto: The optimised graph, input ``input``.

    Raises:
        ExportError: torch.export or the ONNX translation failed (the
            message names the first cause), or the graph has other ops than
            :data:`ALLOWED_OPS`.
    """
    check_opset(opset)
    module = for_export(module)
    example = tracing_example(example, dynamic_batch, dynamic_shape, divisor)
    dynamic = dynamic_shapes_for(example, dynamic_batch, dynamic_shape, divisor)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            program = torch.onnx.export(
                module, (example,), dynamo=True, opset_version=opset,
                input_names=['input'], output_names=list(output_names or []) or None,
                dynamic_shapes=dynamic, verbose=False)
    except Exception as e:  # the exporter raises many types; keep the cause
        raise ExportError(f'torch.onnx.export (dynamo) failed for {type(module).__name__}: '
                          f'{_first_line(e)}') from e
    proto = program.model_proto
    check_standard_ops(proto)
    return proto


def _first_line(e: BaseException) -> str:
    cause = e
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip().splitlines()
    return f'{type(cause).__name__}: {text[0] if text else ""}'


def graph_ops(proto) -> List[Tuple[str, str]]:
    """Sorted (domain, op_type) of every node, functions' nodes included."""
    nodes = list(proto.graph.node) + [n for f in proto.functions for n in f.node]
    return sorted({(n.domain, n.op_type) for n in nodes})


def check_standard_ops(proto, allowed: Iterable[str] = ALLOWED_OPS) -> None:
    """Raise :class:`ExportError` for a custom domain, a local function or an
    op outside ``allowed``."""
    allowed = set(allowed)
    bad = [f'{d or "ai.onnx"}::{op}' for d, op in graph_ops(proto)
           if d not in ('', 'ai.onnx') or op not in allowed]
    if proto.functions:
        bad += [f'function {f.domain}::{f.name}' for f in proto.functions]
    if bad:
        raise ExportError(f'the exported graph has non-standard or unlisted ops: {bad}')


def keep_outputs(proto, count: int):
    """A copy of ``proto`` with its first ``count`` outputs and only the nodes
    and initializers they need (drops e.g. the verification-only assignment
    outputs; the remaining computation is unchanged)."""
    import onnx
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    graph = out.graph
    kept = list(graph.output)[:count]
    del graph.output[:]
    graph.output.extend(kept)
    needed = {o.name for o in kept}
    nodes = []
    for node in reversed(list(graph.node)):
        if any(name in needed for name in node.output):
            nodes.append(node)
            needed.update(name for name in node.input if name)
    nodes.reverse()
    del graph.node[:]
    graph.node.extend(nodes)
    inits = [i for i in graph.initializer if i.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    infos = [v for v in graph.value_info if v.name in needed]
    del graph.value_info[:]
    graph.value_info.extend(infos)
    return out


def save_onnx(proto, path: str) -> None:
    """Write ``proto`` to ``path`` through a temporary file in the same folder
    and a rename: ``path`` is the whole model or untouched, never partial."""
    import onnx
    folder = osp.dirname(osp.abspath(path))
    if not osp.isdir(folder):
        raise FileNotFoundError(f'output folder does not exist: {folder}')
    fd, tmp = tempfile.mkstemp(prefix=osp.basename(path) + '.', suffix='.partial', dir=folder)
    os.close(fd)
    try:
        onnx.save(proto, tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp's file is 0600
        fsync_replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
