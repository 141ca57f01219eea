"""Entry point behind ``tools/deployment/pytorch2onnx.py``: config -> ONNX file.

``pytorch2onnx.py CONFIG [CHECKPOINT] --shape H W [--batch B] [--part P]
[--dynamic-batch] [--dynamic-shape] [--opset N] [--out F] [--verify]``

Order of work, so that a bad input fails before anything is written: check
that the output can be written (:func:`fec_mm.outputs.check_output_file`), build
the model (config, checkpoint), pick the part, check H and W against the
backbone's size divisor, run PyTorch once, export (dynamo, opset >= 18),
check the graph's ops, verify with ONNX Runtime (``--verify``), then write
the file through a temporary file and a rename.
"""
import argparse
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import torch
from mmengine.config import DictAction
from torch import Tensor

from ..checkpoints import CheckpointError
from ..models.assignments import clustering_layers
from ..outputs import check_output_dir, check_output_file
from .model_parts import PARTS, WithAssignments, build_model, export_part, size_divisor
from .onnx_export import (
    DEFAULT_OPSET,
    ExportError,
    check_opset,
    export_onnx,
    keep_outputs,
    save_onnx,
)
from .parity import ParityReport, check_parity, onnxruntime_session, run_session


@dataclass
class ExportResult:
    """What :func:`export_config` did: the file, the part, the parity reports."""
    path: str
    part: str
    num_outputs: int
    reports: List[ParityReport] = field(default_factory=list)
    replaced: bool = False  # an existing file was replaced


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Export an FEC model (backbone, detector backbone+neck, or whole '
        'segmentor/classifier) to ONNX with the dynamo exporter')
    parser.add_argument('config', help='mmdet / mmseg / mmpretrain config file')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint file (default: the '
                        "config's initial weights)")
    parser.add_argument('--shape', type=int, nargs=2, required=True, metavar=('H', 'W'),
                        help='input height and width (any; with --dynamic-shape multiples '
                        'of the backbone\'s size divisor)')
    parser.add_argument('--batch', type=int, default=1, help='batch size of the export')
    parser.add_argument('--part', choices=PARTS, default='auto',
                        help='what to export; auto: backbone+neck of mmdet detectors, the '
                        'whole model of mmseg / mmpretrain ones')
    parser.add_argument('--dynamic-batch', action='store_true', help='free batch size')
    parser.add_argument('--dynamic-shape', action='store_true',
                        help='free H and W (multiples of the size divisor)')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET, help='ONNX opset (>= 18)')
    parser.add_argument('--out', help='output file (default: <config name>_<part>.onnx)')
    parser.add_argument('--verify', action='store_true',
                        help='run ONNX Runtime and print the max error and the assignment '
                        'agreement with PyTorch (float32 near ties counted, not refused)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the initial weights (without a checkpoint) and of '
                        'the --verify inputs')
    parser.add_argument('--atol', type=float, default=1e-4,
                        help='tolerance of the elementwise comparison of --verify')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of the config, key=value pairs')
    return parser


def check_shape(shape: Sequence[int], batch: int, divisor: int,
                dynamic_shape: bool = False) -> None:
    """Raise ValueError unless H, W are positive (multiples of ``divisor`` for
    a dynamic-shape export, whose graph has no padding step; a static export
    of another size pads inside the backbone as PyTorch does)."""
    H, W = shape
    if batch < 1:
        raise ValueError(f'--batch must be >= 1, got {batch}')
    if H < 1 or W < 1:
        raise ValueError(f'--shape {H} {W}: height and width must be positive')
    if dynamic_shape and (H % divisor or W % divisor):
        raise ValueError(f'--shape {H} {W} --dynamic-shape: the backbone needs height and '
                         f'width that are multiples of its size divisor {divisor}, e.g. '
                         f'{max(divisor, -(-H // divisor) * divisor)} '
                         f'{max(divisor, -(-W // divisor) * divisor)}')


def example_input(batch: int, H: int, W: int, seed: int = 0) -> Tensor:
    """A fixed standard-normal batch: the scale of normalised images."""
    return torch.randn(batch, 3, H, W, generator=torch.Generator().manual_seed(seed))


def export_config(config: str, checkpoint: Optional[str], shape: Sequence[int], *,
                  batch: int = 1, part: str = 'auto', dynamic_batch: bool = False,
                  dynamic_shape: bool = False, opset: int = DEFAULT_OPSET,
                  out: Optional[str] = None, verify: bool = False, atol: float = 1e-4,
                  seed: int = 0, cfg_options: Optional[dict] = None) -> ExportResult:
    """Export the config's model (see :mod:`fec_mm.deployment.model_parts`).

    With ``verify``, the graph is exported with the assignment index, points
    and centers of every clustering layer as extra outputs, compared with
    PyTorch under ONNX Runtime (at the export shape, and for a dynamic export
    also at a second shape; differing assignments are rescored in float64,
    float32 near ties are no failure: :mod:`fec_mm.deployment.parity`), and
    the extra outputs are cut off before saving. A comparison that fails
    :attr:`ParityReport.passed` raises: no file is written.

    Raises:
        FileNotFoundError: Config, checkpoint or output folder missing.
        ValueError: Bad shape / opset, a part the model cannot export.
        fec_mm.outputs.OutputPathError: The output cannot be written (a
            ValueError; checked before the work).
        fec_mm.deployment.onnx_export.ExportError: The export failed, or
            ``verify`` found ONNX Runtime disagreeing with PyTorch.
    """
    check_opset(opset)
    if out is not None:
        _check_out_folder(out)
        check_output_file(out, '--out')
    else:  # <config name>_<part>.onnx in the current folder
        check_output_dir(os.getcwd(), 'output folder (the current one, no --out given)')
    # Seeded initial weights, so that a run without checkpoint repeats; the
    # caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(config, checkpoint, cfg_options, backbone_only=part == 'backbone')
    module, part = export_part(model, part)
    divisor = size_divisor(module)
    check_shape(shape, batch, divisor, dynamic_shape)
    if out is None:
        out = f'{osp.splitext(osp.basename(config))[0]}_{part}.onnx'
    replaced = check_output_file(out, 'output')

    x = example_input(batch, *shape, seed=seed)
    with_assignments = verify and bool(clustering_layers(module))
    # With the layers' points and centers, so that a differing assignment is
    # rescored from what each runtime's layer saw (near ties are no failure).
    traced = WithAssignments(module, with_inputs=True) if with_assignments else module
    with torch.no_grad():
        outputs = traced(x)  # the backbone's own input checks run here
    outputs = (outputs,) if isinstance(outputs, Tensor) else tuple(outputs)
    names = traced.names if with_assignments else []
    num_features = len(outputs) - 3 * len(names)
    output_names = [f'output{i}' for i in range(num_features)]
    output_names += [f'assignment.{n}' for n in names]
    output_names += [f'{kind}.{n}' for n in names for kind in ('points', 'centers')]
    proto = export_onnx(traced, x, opset, dynamic_batch, dynamic_shape, divisor,
                        output_names)

    result = ExportResult(path=out, part=part, num_outputs=num_features, replaced=replaced)
    final = keep_outputs(proto, num_features) if with_assignments else proto
    if verify:
        session = onnxruntime_session(proto.SerializeToString())
        shapes = [x]
        if dynamic_batch or dynamic_shape:
            shapes.append(example_input(batch + 1 if dynamic_batch else batch,
                                        shape[0] + divisor if dynamic_shape else shape[0],
                                        shape[1] + 2 * divisor if dynamic_shape else shape[1],
                                        seed=seed + 1))
        for inp in shapes:
            result.reports.append(check_parity(session, traced, inp, num_features, names, atol))
        failed = [r.summary() for r in result.reports if not r.passed]
        if failed:
            raise ExportError('ONNX Runtime disagrees with PyTorch (needs every differing '
                              'assignment to be a float32 near tie or to follow one, and '
                              '>= 99.9% of elements within atol in the images without a near '
                              'tie); nothing written: ' + '; '.join(failed))
        if with_assignments:  # cutting the extra outputs must not change the rest
            full = run_session(session, x)[:num_features]
            cut = run_session(onnxruntime_session(final.SerializeToString()), x)
            if not all((a == b).all() for a, b in zip(full, cut)):
                raise RuntimeError('dropping the assignment outputs changed the graph\'s '
                                   'results (bug in keep_outputs)')
    save_onnx(final, out)
    return result


def _check_out_folder(out: str) -> None:
    if not osp.isdir(osp.dirname(osp.abspath(out))):
        raise FileNotFoundError(f'output folder does not exist: {osp.dirname(out)}')


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = export_config(
            args.config, args.checkpoint, args.shape, batch=args.batch, part=args.part,
            dynamic_batch=args.dynamic_batch, dynamic_shape=args.dynamic_shape,
            opset=args.opset, out=args.out, verify=args.verify, atol=args.atol,
            seed=args.seed, cfg_options=args.cfg_options)
    except (FileNotFoundError, ValueError, ExportError, CheckpointError) as e:
        parser.exit(1, f'{parser.prog}: error: {e}\n')  # nothing was written
    print(f'exported {result.part} ({result.num_outputs} outputs) to {result.path}'
          + (' (replaced the existing file)' if result.replaced else ''))
    for report in result.reports:
        print(report.summary())
