"""ONNX Runtime vs PyTorch: elementwise error of the outputs and agreement of
the cluster assignments.

A flipped near-tie moves a token to another cluster and changes a whole
region's output, so the maximum error alone says little: the report gives the
share of elements within a tolerance and the share of recorded assignment
indices (``fec_mm.models.record_assignments``) that are equal.
"""
from dataclasses import dataclass, field
from typing import List, Sequence

import numpy as np
import torch
from torch import Tensor

# What --verify requires (the acceptance): shares of elements within
# atol and of assignment indices equal.
MIN_WITHIN_ATOL = 0.999
MIN_ASSIGNMENTS_EQUAL = 0.999


@dataclass
class ParityReport:
    """Comparison of one ONNX Runtime run with PyTorch's.

    Attributes:
        shape (tuple): The input shape compared.
        max_abs_error (float): Over every element of every output.
        max_abs_value (float): Largest ``abs(PyTorch output)``, for scale.
        within_atol (float): Share of output elements with ``abs(ORT - PyTorch) <= atol``.
        atol (float): That tolerance.
        assignments_equal (float): Share of recorded assignment indices that
            are equal (nan when the model has no clustering layer).
        indices_differing (int): How many assignment indices differ, of
            ``indices_total``.
        indices_total (int): Recorded assignment indices compared.
        layers_differing (list[str]): Clustering layers with any index differing.
    """
    shape: tuple
    max_abs_error: float
    max_abs_value: float
    within_atol: float
    atol: float
    assignments_equal: float
    indices_differing: int = 0
    indices_total: int = 0
    layers_differing: List[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """At least :data:`MIN_WITHIN_ATOL` of the elements within ``atol`` and
        :data:`MIN_ASSIGNMENTS_EQUAL` of the assignments equal."""
        return bool(self.within_atol >= MIN_WITHIN_ATOL
                    and (np.isnan(self.assignments_equal)
                         or self.assignments_equal >= MIN_ASSIGNMENTS_EQUAL))

    def summary(self) -> str:
        shape = 'x'.join(str(s) for s in self.shape)
        text = (f'input {shape}: max |ORT - PyTorch| {self.max_abs_error:.3g} '
                f'(outputs up to {self.max_abs_value:.3g}), '
                f'{100 * self.within_atol:.3f}% of elements within {self.atol:g}')
        if not np.isnan(self.assignments_equal):
            text += f', {100 * self.assignments_equal:.3f}% of assignments equal'
            if self.layers_differing:
                text += (f' ({self.indices_differing} of {self.indices_total:,} differ, in '
                         f'{len(self.layers_differing)} layers, first '
                         f'{self.layers_differing[0]})')
        return text


def onnxruntime_session(model_bytes: bytes, threads: int = 0):
    """A CPU ONNX Runtime session of a serialised model (``threads`` 0: ORT's default)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=['CPUExecutionProvider'])


def run_session(session, x: Tensor) -> List[np.ndarray]:
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})


def compare(ort_outputs: Sequence[np.ndarray], torch_outputs: Sequence[Tensor],
            num_features: int, layer_names: Sequence[str], shape: tuple,
            atol: float = 1e-4) -> ParityReport:
    """Compare the first ``num_features`` outputs elementwise and the rest
    (assignment indices, one per name of ``layer_names``) for equality."""
    if len(ort_outputs) != len(torch_outputs):
        raise ValueError(f'ONNX Runtime gave {len(ort_outputs)} outputs, PyTorch '
                         f'{len(torch_outputs)}')
    errors, values = [], []
    for o, t in zip(ort_outputs[:num_features], torch_outputs[:num_features]):
        t = t.detach().cpu().numpy()
        if o.shape != t.shape:
            raise ValueError(f'output shapes differ: ONNX Runtime {o.shape}, PyTorch {t.shape}')
        errors.append(np.abs(o.astype(np.float64) - t.astype(np.float64)).ravel())
        values.append(np.abs(t).ravel())
    err = np.concatenate(errors)
    equal = total = 0
    differing = []
    for name, o, t in zip(layer_names, ort_outputs[num_features:],
                          torch_outputs[num_features:]):
        t = t.cpu().numpy()
        same = int((o == t).sum())
        equal += same
        total += t.size
        if same != t.size:
            differing.append(name)
    return ParityReport(
        shape=tuple(shape), max_abs_error=float(err.max()),
        max_abs_value=float(np.concatenate(values).max()),
        within_atol=float((err <= atol).mean()), atol=atol,
        assignments_equal=equal / total if total else float('nan'),
        indices_differing=total - equal, indices_total=total, layers_differing=differing)


def check_parity(session, module: torch.nn.Module, x: Tensor, num_features: int,
                 layer_names: Sequence[str], atol: float = 1e-4) -> ParityReport:
    """Run ``session`` and ``module`` (PyTorch, no grad) on ``x`` and compare."""
    with torch.no_grad():
        out = module(x)
    out = (out,) if isinstance(out, Tensor) else tuple(out)
    return compare(run_session(session, x), out, num_features, layer_names,
                   tuple(x.shape), atol)
