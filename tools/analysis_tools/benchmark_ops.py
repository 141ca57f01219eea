"""Benchmark the clustering ops and the FEC-Small backbone: reference vs fused.

Two tables, printed side by side in one run (Markdown):

1. **Ops**: every clustering op call FEC-Small makes at a setting (shapes
   derived from the backbone's ``arch_settings``), forward+backward of one
   call per implementation, and the total over one forward+backward of the
   backbone (time: Σ calls × time; memory: the largest call).
2. **Backbone**: FEC-Small (``fec_mm.models.FEC``), batch 1, forward+backward
   (loss = Σ of the four outputs), ``ops_impl='reference'`` vs ``'auto'``.

Settings (docs/notes/design.md §3): ``cls`` 224×224, centers (4,4,2,2); ``seg``
512×512, centers (10,10,5,5); ``det`` 800×1344, centers 7, folds (2,2,1,1);
``det-nofold`` the same without folds (where the authors ran out of memory).

Method:
- Every measurement (one op shape, or one backbone, for one implementation)
  runs in a fresh subprocess, so that no allocator cache or earlier peak
  hides the step's memory.
- Peak memory on CPU: right before the first step the process resets its
  peak resident set size (writing 5 to ``/proc/self/clear_refs`` resets
  ``VmHWM``, Linux >= 4.0); after the step the reported figure is
  ``VmHWM - VmRSS before the step``: the memory the step itself touched
  (saved activations, temporaries, gradients), as the kernel counts it. Where
  ``clear_refs`` is not writable, the growth of ``ru_maxrss`` is used. On
  CUDA: ``torch.cuda.max_memory_allocated()`` after
  ``reset_peak_memory_stats()``, minus the memory allocated before the step.
- Each worker runs one warm-up step on small shapes first (extension loading,
  thread pool, Triton compilation are not the step's cost), then the measured
  steps.
- Memory and time come from two separate fresh processes. The memory process
  gives glibc a fixed mmap threshold (``MALLOC_MMAP_THRESHOLD_``), so that
  memory freed by the warm-up is returned to the system rather than silently
  reused, and measures one step. That setting also makes every allocation of
  128 KiB or more fault its pages in again on every step (about half of such
  a run was system time), which a training process does not pay, so the time
  process runs with glibc's defaults. Each implementation gets its own time
  process too: stepping both in turn in one process made the reference
  path's detection step ~25% slower than alone (8.7 s vs 6.9 s), which
  flattered the ratio.
- Time: the minimum over at least ``--repeat`` steps after one untimed step
  (and at least one second of them, at most 50), with
  ``torch.cuda.synchronize()`` on GPU; the minimum is the figure least
  disturbed by other processes on a shared machine. The ratios of one run,
  measured side by side, are what count.

Example (the table in docs/notes/measurements.md)::

    python tools/analysis_tools/benchmark_ops.py --settings cls seg det det-nofold
"""
import argparse
import json
import os
import subprocess
import sys
from typing import List, Optional, Tuple

import torch

from fec_mm.measure import measure_step

SETTINGS = {
    'cls': dict(size=(224, 224), num_centers=(4, 4, 2, 2), folds=(1, 1, 1, 1)),
    'seg': dict(size=(512, 512), num_centers=(10, 10, 5, 5), folds=(1, 1, 1, 1)),
    'det': dict(size=(800, 1344), num_centers=(7, 7, 7, 7), folds=(2, 2, 1, 1)),
    'det-nofold': dict(size=(800, 1344), num_centers=(7, 7, 7, 7), folds=(1, 1, 1, 1)),
}
# FEC-Small, docs/notes/design.md §3 (checked against fec_mm.models.FEC.arch_settings
# in the parent process, so the two cannot drift apart silently).
SMALL = dict(depths=(3, 4, 5, 2), widths=(32, 64, 196, 320), heads=(4, 4, 8, 8), head_dim=24)


def op_calls(setting: str, batch: int = 1) -> List[Tuple[str, Tuple[int, int, int, int], int]]:
    """Clustering op calls of one FEC-Small forward: (op, (R, N, M, d), count)."""
    cfg = SETTINGS[setting]
    H, W = cfg['size'][0] // 4, cfg['size'][1] // 4
    calls = []
    for k in range(4):
        fold = cfg['folds'][k]
        if k > 0:  # pooling into stage k: the previous map, stage k's fold, M = N/4
            n = (H // fold) * (W // fold)
            calls.append(('cluster_pool', (batch * fold**2, n, n // 4, SMALL['widths'][k]), 1))
            H, W = H // 2, W // 2
        n = (H // fold) * (W // fold)
        calls.append(('cluster_encode', (batch * SMALL['heads'][k] * fold**2, n,
                                         cfg['num_centers'][k]**2, SMALL['head_dim']),
                      SMALL['depths'][k]))
    return calls


# ------------------------------------------------------------------ worker side
def _op_step(op: str, shape, impl: str, device: str, dtype: torch.dtype):
    from fec_mm import ops
    R, N, M, d = shape
    gen = torch.Generator().manual_seed(0)
    tensors = [torch.randn(R, n, d, generator=gen).to(device, dtype) for n in (N, N, M, M)]
    points, values, centers, value_centers = tensors
    if op == 'cluster_encode':
        alpha = torch.ones(1, device=device, requires_grad=True)
        beta = torch.zeros(1, device=device, requires_grad=True)
        leaves = [t.requires_grad_() for t in tensors] + [alpha, beta]

        def step():
            out = ops.cluster_encode(points, values, centers, value_centers, alpha, beta,
                                     impl=impl)
            out.backward(torch.ones_like(out))
            for t in leaves:
                t.grad = None
    else:
        # as in ClusterPooling: points and centers only pick the assignment
        leaves = [values.requires_grad_(), value_centers.requires_grad_()]

        def step():
            out = ops.cluster_pool(points, values, centers, value_centers, impl=impl)
            out.backward(torch.ones_like(out))
            for t in leaves:
                t.grad = None
    return step


def _backbone_step(setting: str, impl: str, device: str, dtype: torch.dtype,
                   size: Optional[Tuple[int, int]] = None):
    from fec_mm.models import FEC
    cfg = SETTINGS[setting]
    torch.manual_seed(0)
    model = FEC('small', num_centers=cfg['num_centers'], folds=cfg['folds'],
                ops_impl=impl).to(device, dtype)
    x = torch.randn(1, 3, *(size or cfg['size']), device=device, dtype=dtype)

    def step():
        sum(out.float().sum() for out in model(x)).backward()
        model.zero_grad(set_to_none=True)
    return step


def worker(spec: dict) -> dict:
    if spec['threads']:
        torch.set_num_threads(spec['threads'])
    dtype = getattr(torch, spec['dtype'])
    if spec['kind'] == 'op':
        step = _op_step(spec['op'], spec['shape'], spec['impl'], spec['device'], dtype)
        warmup = _op_step(spec['op'], (1, 64, 16, spec['shape'][3]), spec['impl'],
                          spec['device'], dtype)
    else:
        step = _backbone_step(spec['setting'], spec['impl'], spec['device'], dtype)
        warmup = _backbone_step(spec['setting'], spec['impl'], spec['device'], dtype,
                                size=(64, 64))
    return measure_step(step, warmup, spec['device'], spec['what'], spec['repeat'])


# ------------------------------------------------------------------ parent side
# A fixed glibc mmap threshold: every block of 128 KiB or more is mapped on
# allocation and unmapped on free, so that memory freed by the warm-up step is
# not silently reused by the measured one (glibc's dynamic threshold would
# otherwise keep it in the heap, invisible to VmRSS growth).
MALLOC_ENV = {'MALLOC_MMAP_THRESHOLD_': '131072', 'MALLOC_TRIM_THRESHOLD_': '131072'}


def run_isolated(spec: dict, timeout: int) -> Optional[dict]:
    """Measure memory, then time, each in a fresh interpreter; None when one
    failed (e.g. out of memory)."""
    result = {}
    for what, env in (('memory', MALLOC_ENV), ('time', {})):
        part = _run_worker(dict(spec, what=what), env, timeout)
        if part is None:
            return None
        result.update(part)
    return result


def _run_worker(spec: dict, env: dict, timeout: int) -> Optional[dict]:
    try:
        result = subprocess.run([sys.executable, __file__, '--worker', json.dumps(spec)],
                                capture_output=True, text=True, timeout=timeout,
                                env=dict(os.environ, **env))
    except subprocess.TimeoutExpired:
        sys.stderr.write(f'measurement {spec} timed out after {timeout} s\n')
        return None
    for line in reversed(result.stdout.splitlines()):
        if line.startswith('RESULT '):
            return json.loads(line[len('RESULT '):])
    sys.stderr.write(f'measurement {spec} failed:\n{result.stderr[-2000:]}\n')
    return None


def _fmt(value: Optional[float], unit: str) -> str:
    if value is None:
        return 'failed'
    return f'{value * 1000:.1f} ms' if unit == 's' else f'{value:.0f} MiB'


def _ratio(a: Optional[float], b: Optional[float]) -> str:
    return '-' if a is None or b is None or b <= 0 else f'{a / b:.2f}'


def ops_table(settings, impls, args) -> List[str]:
    base = impls[0]
    head = ['setting', 'op', '(R, N, M, d)', 'calls']
    for impl in impls:
        head += [f'{impl} time', f'{impl} peak']
    for impl in impls[1:]:
        head += [f'time {impl}/{base}', f'mem {impl}/{base}']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for setting in settings:
        totals = {impl: dict(time_s=0.0, peak_mb=0.0) for impl in impls}
        for op, shape, count in op_calls(setting):
            res = {}
            for impl in impls:
                spec = dict(kind='op', op=op, shape=shape, impl=impl, device=args.device,
                            dtype=args.dtype, repeat=args.repeat, threads=args.threads)
                res[impl] = run_isolated(spec, args.timeout)
                t = totals[impl]
                if res[impl] is None or t is None:
                    totals[impl] = None
                else:
                    t['time_s'] += count * res[impl]['time_s']
                    t['peak_mb'] = max(t['peak_mb'], res[impl]['peak_mb'])
            lines.append(_row([setting, op.replace('cluster_', ''), str(shape), str(count)],
                              res, impls))
            print(lines[-1], file=sys.stderr, flush=True)
        lines.append(_row([setting, '**all ops, one fwd+bwd**', '', ''], totals, impls))
    return lines


def _row(cells, res, impls) -> str:
    base = impls[0]
    get = {impl: (res[impl] or {}) for impl in impls}
    for impl in impls:
        cells += [_fmt(get[impl].get('time_s'), 's'), _fmt(get[impl].get('peak_mb'), 'mb')]
    for impl in impls[1:]:
        cells += [_ratio(get[impl].get('time_s'), get[base].get('time_s')),
                  _ratio(get[impl].get('peak_mb'), get[base].get('peak_mb'))]
    return '| ' + ' | '.join(cells) + ' |'


def backbone_table(settings, args) -> List[str]:
    impls = ['reference', 'auto']
    head = ['setting', 'input', 'reference time', 'reference peak', 'auto time', 'auto peak',
            'time auto/ref', 'mem auto/ref']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for setting in settings:
        res = {}
        for impl in impls:
            spec = dict(kind='backbone', setting=setting, impl=impl, device=args.device,
                        dtype=args.dtype, repeat=args.backbone_repeat, threads=args.threads)
            res[impl] = run_isolated(spec, args.timeout)
        h, w = SETTINGS[setting]['size']
        cells = [setting, f'{h}×{w}']
        for impl in impls:
            r = res[impl] or {}
            cells += [f"{r['time_s']:.2f} s" if r else 'failed', _fmt(r.get('peak_mb'), 'mb')]
        r, a = res['reference'] or {}, res['auto'] or {}
        cells += [_ratio(a.get('time_s'), r.get('time_s')),
                  _ratio(a.get('peak_mb'), r.get('peak_mb'))]
        lines.append('| ' + ' | '.join(cells) + ' |')
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--settings', nargs='+', choices=list(SETTINGS),
                        default=['cls', 'seg', 'det', 'det-nofold'])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--impls', nargs='+', default=None,
                        help="ops compared, the first is the baseline (default: reference "
                             "and cpu on CPU, reference and triton on CUDA)")
    parser.add_argument('--dtype', default='float32', choices=['float32', 'float16', 'bfloat16'])
    parser.add_argument('--repeat', type=int, default=3, help='timed op steps')
    parser.add_argument('--backbone-repeat', type=int, default=3,
                        help='timed backbone steps')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads (0: the default). On a machine shared with other '
                             'jobs, 1 keeps parallel regions from waiting on busy cores')
    parser.add_argument('--timeout', type=int, default=1200, help='seconds per measurement')
    parser.add_argument('--skip-ops', action='store_true')
    parser.add_argument('--skip-backbone', action='store_true')
    parser.add_argument('--worker', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        print('RESULT ' + json.dumps(worker(json.loads(args.worker))), flush=True)
        return
    try:
        from fec_mm.models import FEC
    except ImportError as e:  # fec_mm.ops needs torch alone; the backbone mmcv too
        if not args.skip_backbone:
            raise SystemExit(f'the backbone table needs fec_mm.models (mmengine, mmcv): {e}; '
                             '--skip-backbone measures the ops alone') from e
        FEC = None
        print(f'(SMALL not checked against FEC.arch_settings: {e})', file=sys.stderr)
    if FEC is not None and {k: FEC.arch_settings['small'][k] for k in SMALL} != SMALL:
        raise RuntimeError('SMALL differs from FEC.arch_settings: update this script')
    impls = args.impls or (['reference', 'cpu'] if args.device == 'cpu'
                           else ['reference', 'triton'])
    name = torch.cuda.get_device_name() if args.device == 'cuda' else (
        f'CPU, {args.threads or torch.get_num_threads()} threads')
    print(f'# fec_mm clustering ops benchmark: {name}, torch {torch.__version__}, '
          f'{args.dtype}, batch 1, forward+backward\n')
    if not args.skip_ops:
        print('## Ops (one call; totals: Σ calls × time, largest peak)\n')
        print('\n'.join(ops_table(args.settings, impls, args)) + '\n', flush=True)
    if not args.skip_backbone:
        print("## FEC-Small backbone, ops_impl='reference' vs 'auto'\n")
        print('\n'.join(backbone_table(args.settings, args)) + '\n', flush=True)


if __name__ == '__main__':
    main()
