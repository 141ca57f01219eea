"""Benchmark the exported FEC-Small backbone: ONNX Runtime (CPU) vs PyTorch.

For each setting the backbone (random init, seed 0) is exported with the
dynamo exporter (static shape, batch 1, with its assignments as extra
outputs for the parity columns), then timed forward-only:

- PyTorch, ``ops_impl='auto'`` (the fused C++ kernels on CPU), ``no_grad``;
- ONNX Runtime, CPUExecutionProvider, default graph optimisations, on the
  graph without the assignment outputs (what ``pytorch2onnx.py`` saves).

Both run on ``--threads`` threads. Time: the minimum over ``--repeat`` runs
after two warm-up runs (the least disturbed figure on a shared machine).
Parity: max |ORT - PyTorch|, share of elements within 1e-4, share of
recorded assignments equal, on the timed input (standard normal).

Settings (docs/notes/design.md §3): ``cls`` 224×224, centers (4, 4, 2, 2); ``seg``
512×512, centers (10, 10, 5, 5).

Example (the table in docs/notes/measurements.md)::

    python tools/analysis_tools/benchmark_onnx.py --settings cls seg
"""
import argparse

import torch

from fec_mm.deployment import WithAssignments, check_parity, export_onnx, onnxruntime_session
from fec_mm.deployment.onnx_export import keep_outputs
from fec_mm.deployment.parity import run_session
from fec_mm.measure import best_time
from fec_mm.models import FEC

SETTINGS = {
    'cls': dict(size=(224, 224), num_centers=(4, 4, 2, 2)),
    'seg': dict(size=(512, 512), num_centers=(10, 10, 5, 5)),
}


def best_time_ms(fn, repeat: int) -> float:
    """Minimum wall time of ``fn()`` in ms over ``repeat`` runs after 2 warm-ups."""
    return 1000 * best_time(fn, repeat, warmup=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--settings', nargs='+', choices=sorted(SETTINGS),
                        default=['cls', 'seg'])
    parser.add_argument('--threads', type=int, default=2)
    parser.add_argument('--repeat', type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for name in args.settings:
        cfg = SETTINGS[name]
        torch.manual_seed(0)
        backbone = FEC('small', num_centers=cfg['num_centers']).eval()
        wrapped = WithAssignments(backbone)
        x = torch.randn(1, 3, *cfg['size'], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            outs = wrapped(x)
        num_features = len(outs) - len(wrapped.names)
        proto = export_onnx(wrapped, x)
        report = check_parity(onnxruntime_session(proto.SerializeToString(), args.threads),
                              wrapped, x, num_features, wrapped.names)
        session = onnxruntime_session(keep_outputs(proto, num_features).SerializeToString(),
                                      args.threads)

        def torch_run():
            with torch.no_grad():
                backbone(x)

        t_torch = best_time_ms(torch_run, args.repeat)
        t_ort = best_time_ms(lambda: run_session(session, x), args.repeat)
        rows.append((name, cfg, t_torch, t_ort, report))
    print(f'FEC-Small backbone, batch 1, forward, {args.threads} threads, '
          f'min of {args.repeat} runs')
    print('| setting | input | centers | PyTorch auto (ms) | ONNX Runtime CPU (ms) | '
          'ORT / PyTorch | max abs err | within 1e-4 | assignments equal |')
    print('|---|---|---|---|---|---|---|---|---|')
    for name, cfg, t_torch, t_ort, r in rows:
        size = 'x'.join(map(str, cfg['size']))
        centers = ','.join(map(str, cfg['num_centers']))
        print(f'| {name} | {size} | {centers} | {t_torch:.1f} | {t_ort:.1f} | '
              f'{t_ort / t_torch:.2f} | {r.max_abs_error:.2g} | {100 * r.within_atol:.3f}% | '
              f'{100 * r.assignments_equal:.3f}% |')


if __name__ == '__main__':
    main()
