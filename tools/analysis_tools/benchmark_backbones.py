"""FEC-Small/Base next to the backbones users would pick instead: speed,
memory, FLOPs, and how time grows with the input side.

Usage (the tables and plot of docs/notes/measurements.md, 26.5 min on a shared 2-core CPU):
    python tools/analysis_tools/benchmark_backbones.py --threads 1 --sizes 224 512 800x1344 \
        --sweep 224 448 672 896 1120 1344 --out docs/benchmarks
Without options: 224² and 512², sweep 224/448/896 (~10 min, estimated). ``--quick``: 224²
only, sweep 224/448, one timed step. On a GPU: ``--device cuda``.

Backbones (all with their four stage outputs, as a detector or segmentor
uses them; drop path 0): FEC-Small and FEC-Base, CoC-Tiny and CoC-Small
(Context Clusters, centers 2 at 224² and 5 elsewhere, folds (8, 4, 2, 1);
``fec_mm``), ResNet-18/50,
PoolFormer-S12/S24, Swin-T and ConvNeXt-T (mmpretrain's implementations).
FEC runs at the authors' setting for each size (docs/notes/design.md §3): 224² centers
(4, 4, 2, 2); 512² (10, 10, 5, 5); 800×1344 and the side sweep centers 7 with
folds (2, 2, 1, 1). The sweep also runs FEC-Small without folds ("nofold"),
where the cluster poolings' work grows with the square of the pixel count.

Figures, batch 1, float32, random weights and input:
- infer img/s: ``model.eval()`` forward under ``torch.no_grad()``;
- train img/s: ``model.train()``, forward, loss = Σ mean of the outputs,
  backward, SGD step with momentum;
- peak memory (MiB) of one inference and of one training step, beyond what was
  resident before it: CPU, the process's peak RSS after resetting it
  (``/proc/self/clear_refs``; growth of ``ru_maxrss`` where that is not
  writable) with a fixed glibc mmap threshold so that freed memory is not
  silently reused (``fec_mm.measure.PeakMemory``; tracemalloc does not see
  torch's allocations); CUDA, ``torch.cuda.max_memory_allocated``;
- GFLOPs of one forward (multiply-adds, mmengine's counter with FEC's ops,
  ``fec_mm.analysis``); achieved GFLOP/s as a fraction of this machine's
  float32 matrix-multiply rate (best of square matmuls, measured by this
  script in the same run), training counted as 3 forwards.

One fresh process per figure: the parent imports the libraries once and never
runs a tensor op; every figure (and the matmul rate, and each FLOP count) is
measured in a child forked from it (spawned on CUDA; that path is untested,
no GPU was at hand), so every measurement starts from the same
state and none inherits the allocator caches, thread pools or peaks of
another. Time: the minimum over at least ``--repeat`` steps after a warm-up
step at a small size and one untimed step at the measured size (at least
``--min-time`` seconds of steps, at most 50); the minimum is the figure least
disturbed by other jobs on a shared machine, and ratios within one run are
what count.
"""
import argparse
import ctypes
import json
import math
import multiprocessing
import os
import sys
import tempfile
import textwrap
import time
import traceback
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from fec_mm.measure import measure_step

# name -> (library, constructor arguments); FEC's num_centers/folds come from
# the size (fec_settings).
BACKBONES: Dict[str, Tuple[str, dict]] = {
    'FEC-Small': ('fec', dict(arch='small')),
    'FEC-Base': ('fec', dict(arch='base')),
    # Context Clusters, FEC's parent (docs/user_guides/context_cluster.md).
    'CoC-Tiny': ('coc', dict(arch='tiny')),
    'CoC-Small': ('coc', dict(arch='small')),
    'ResNet-18': ('mmpretrain', dict(type='ResNet', depth=18, out_indices=(0, 1, 2, 3))),
    'ResNet-50': ('mmpretrain', dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3))),
    'PoolFormer-S12': ('mmpretrain', dict(type='PoolFormer', arch='s12',
                                          out_indices=(0, 2, 4, 6))),
    'PoolFormer-S24': ('mmpretrain', dict(type='PoolFormer', arch='s24',
                                          out_indices=(0, 2, 4, 6))),
    'Swin-T': ('mmpretrain', dict(type='SwinTransformer', arch='tiny', drop_path_rate=0.,
                                  out_indices=(0, 1, 2, 3), pad_small_map=True)),
    'ConvNeXt-T': ('mmpretrain', dict(type='ConvNeXt', arch='tiny', out_indices=(0, 1, 2, 3))),
    # Sweep only: FEC-Small at the detection centers without folds.
    'FEC-Small nofold': ('fec', dict(arch='small', folds=(1, 1, 1, 1))),
}
DEFAULT_MODELS = [name for name in BACKBONES if 'nofold' not in name]
SIZES = {'224': (224, 224), '512': (512, 512), '800x1344': (800, 1344)}
BASELINE = 'ResNet-50'
M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = -3, -1  # glibc mallopt parameters


def fec_settings(size: Tuple[int, int], sweep: bool) -> dict:
    """The authors' FEC centers/folds for an input size (docs/notes/design.md §3)."""
    if not sweep and size == (224, 224):
        return dict(num_centers=(4, 4, 2, 2), folds=(1, 1, 1, 1))
    if not sweep and size == (512, 512):
        return dict(num_centers=(10, 10, 5, 5), folds=(1, 1, 1, 1))
    return dict(num_centers=(7, 7, 7, 7), folds=(2, 2, 1, 1))


def coc_settings(size: Tuple[int, int], sweep: bool) -> dict:
    """The authors' CoC centers per region: their classifiers' 2 (4 centers) at
    224², else 5 (their detection and segmentation "-25" models); folds
    (8, 4, 2, 1) throughout, as in all their models."""
    centers = 2 if not sweep and size == (224, 224) else 5
    return dict(num_centers=centers, folds=(8, 4, 2, 1))


def build(name: str, size: Tuple[int, int], sweep: bool) -> torch.nn.Module:
    library, kwargs = BACKBONES[name]
    if library == 'fec':
        from fec_mm.models import FEC
        return FEC(**dict(fec_settings(size, sweep), **kwargs))
    if library == 'coc':
        from fec_mm.models import ContextCluster
        return ContextCluster(**dict(coc_settings(size, sweep), **kwargs))
    from mmpretrain.registry import MODELS
    return MODELS.build(dict(kwargs))


# ------------------------------------------------------------------ child side
def _step(spec: dict, size: Tuple[int, int]) -> Callable[[], None]:
    device = spec['device']
    torch.manual_seed(0)
    model = build(spec['model'], size, spec['sweep']).to(device)
    x = torch.randn(1, 3, *size, device=device)
    if spec['mode'] == 'infer':
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
        return step
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)

    def step():
        loss = sum(out.float().mean() for out in model(x))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def matmul_rate(device: str, n: int = 1024, min_time: float = 1.0) -> float:
    """Best float32 square-matmul rate in GFLOP/s (multiply-adds, as the counter)."""
    a, b = (torch.randn(n, n, device=device) for _ in range(2))
    best = math.inf
    a @ b  # warm-up
    start, steps = time.perf_counter(), 0
    while steps < 5 or time.perf_counter() - start < min_time:
        steps += 1
        if device == 'cuda':
            torch.cuda.synchronize()
        t = time.perf_counter()
        a @ b
        if device == 'cuda':
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return n**3 / best / 1e9


def figure(spec: dict) -> dict:
    """One figure, in a fresh (forked) process."""
    if spec['threads']:
        torch.set_num_threads(spec['threads'])
    kind, device = spec['kind'], spec['device']
    if device == 'cuda' and not torch.cuda.is_available():
        raise RuntimeError('--device cuda: no CUDA device available')
    if kind == 'matmul':
        return dict(gflops_per_s=matmul_rate(device, min_time=spec['min_time']))
    size = tuple(spec['size'])
    if kind == 'flops':
        from fec_mm.analysis import count_flops
        model = build(spec['model'], size, spec['sweep'])
        model.eval()  # not chained: mmpretrain's ResNet.train() returns None
        with torch.no_grad():
            count = count_flops(model, (torch.randn(1, 3, *size),))
        return dict(gflops=count.flops / 1e9, params_m=count.params / 1e6)
    if kind == 'memory' and device == 'cpu':
        # What MALLOC_MMAP_THRESHOLD_ does at start-up (benchmark_ops), for a
        # forked child: blocks >= 128 KiB are mapped and unmapped, not reused.
        libc = ctypes.CDLL('libc.so.6')
        libc.mallopt(M_MMAP_THRESHOLD, 131072)
        libc.mallopt(M_TRIM_THRESHOLD, 131072)
    step = _step(spec, size)
    warmup = _step(spec, (64, 64))
    if kind == 'memory':
        return measure_step(step, warmup, device, 'memory', 1)
    return measure_step(step, warmup, device, 'time', spec['repeat'], spec['min_time'])


def _child(spec: dict, conn) -> None:
    try:
        conn.send(dict(ok=True, result=figure(spec)))
    except BaseException:  # reported to the parent, which prints it
        conn.send(dict(ok=False, error=traceback.format_exc()[-3000:]))
    finally:
        conn.close()


def run_fresh(spec: dict, timeout: float) -> Optional[dict]:
    """``figure(spec)`` in a child forked from this (op-free) process; None
    when it failed, ran out of memory or time."""
    # Fork on CPU (no start-up cost: the parent has the libraries imported);
    # spawn on CUDA, which cannot be initialised in a forked child.
    ctx = multiprocessing.get_context('spawn' if spec['device'] == 'cuda' else 'fork')
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child, args=(spec, send))
    proc.start()
    send.close()
    try:
        message = recv.recv() if recv.poll(timeout) else None
    except EOFError:  # the child died without a word (e.g. killed for memory)
        message = None
    proc.join(5)
    if proc.is_alive():
        proc.kill()
        proc.join()
    if message is None:
        sys.stderr.write(f'{spec}: no result (exit code {proc.exitcode}, '
                         f'timeout {timeout} s)\n')
        return None
    if not message['ok']:
        sys.stderr.write(f"{spec} failed:\n{message['error']}\n")
        return None
    return message['result']


# ------------------------------------------------------------------ parent side
def _fmt(value: Optional[float], digits: int = 1) -> str:
    return '–' if value is None else f'{value:.{digits}f}'


def measure_model(name: str, size: Tuple[int, int], args, sweep: bool = False,
                  modes: Sequence[str] = ('infer', 'train')) -> dict:
    """All figures of one backbone at one size, each in its own process."""
    base = dict(model=name, size=list(size), device=args.device, threads=args.threads,
                repeat=args.repeat, min_time=args.min_time, sweep=sweep)
    row = {}
    flops = run_fresh(dict(base, kind='flops'), args.timeout)
    if flops:
        row.update(flops)
    for mode in modes:
        timed = run_fresh(dict(base, kind='time', mode=mode), args.timeout)
        row[f'{mode}_s'] = timed['time_s'] if timed else None
        if not sweep:
            mem = run_fresh(dict(base, kind='memory', mode=mode), args.timeout)
            row[f'{mode}_mb'] = mem['peak_mb'] if mem else None
    return row


def main_table(results: Dict[str, Dict[str, dict]], rate: Optional[float]) -> List[str]:
    head = ['input', 'backbone', 'params M', 'GFLOPs', 'infer img/s', 'train img/s',
            f'infer time / {BASELINE}', 'infer peak MiB', 'train peak MiB',
            'infer GFLOP/s (of matmul)', 'train GFLOP/s (of matmul)']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for size_name, rows in results.items():
        base = rows.get(BASELINE, {}).get('infer_s')
        for name, r in rows.items():
            cells = [size_name.replace('x', '×'), name, _fmt(r.get('params_m'), 2),
                     _fmt(r.get('gflops'), 2)]
            for mode in ('infer', 'train'):
                t = r.get(f'{mode}_s')
                cells.append(_fmt(1 / t if t else None, 2))
            t = r.get('infer_s')
            cells.append(_fmt(t / base if t and base else None, 2))
            cells += [_fmt(r.get('infer_mb'), 0), _fmt(r.get('train_mb'), 0)]
            for mode, factor in (('infer', 1), ('train', 3)):
                t, g = r.get(f'{mode}_s'), r.get('gflops')
                if t and g and rate:
                    achieved = factor * g / t
                    cells.append(f'{achieved:.1f} ({100 * achieved / rate:.0f} %)')
                else:
                    cells.append('–')
            lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def sweep_table(sweep: Dict[str, Dict[int, dict]], sides: Sequence[int]) -> List[str]:
    head = ['backbone'] + [f'{s}² ms (GFLOPs)' for s in sides] + [
        f'time {sides[-1]}²/{sides[0]}²', f'GFLOPs {sides[-1]}²/{sides[0]}²']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for name, by_side in sweep.items():
        cells = [name]
        for s in sides:
            r = by_side.get(s, {})
            t = r.get('infer_s')
            cells.append(f"{_fmt(t * 1e3 if t else None, 0)} ({_fmt(r.get('gflops'), 1)})")
        first, last = by_side.get(sides[0], {}), by_side.get(sides[-1], {})
        for key in ('infer_s', 'gflops'):
            a, b = first.get(key), last.get(key)
            cells.append(_fmt(b / a if a and b else None, 1))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return lines


def plot_sweep(sweep: Dict[str, Dict[int, dict]], path: Path, title: str) -> None:
    """Inference time vs input side, log-log, with a line ∝ side² (the pixel
    count) for reference; written to a temp file then renamed."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter
    fig, ax = plt.subplots(figsize=(7.5, 5))
    first = None
    for name, by_side in sweep.items():
        pts = [(int(s), r['infer_s'] * 1e3) for s, r in sorted(by_side.items(), key=lambda kv:
                                                                 int(kv[0])) if r.get('infer_s')]
        if pts:
            style = '-o' if name.startswith('FEC') else '--s'
            ax.plot(*zip(*pts), style, label=name, markersize=4)
            first = first or pts
    sides = sorted({int(s) for by_side in sweep.values() for s in by_side})
    if first and len(sides) > 1:
        s0, t0 = first[0]
        ax.plot(sides, [t0 * (s / s0)**2 for s in sides], ':', color='gray',
                label='∝ side² (pixel count)')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xticks(sides)
    ax.set_xticklabels([str(s) for s in sides])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel('input side (square image, pixels)')
    ax.set_ylabel('inference time per image (ms)')
    ax.set_title('\n'.join(textwrap.wrap(title, 90)), fontsize=8)
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix='.png', dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent)
    with os.fdopen(fd, 'w') as f:
        f.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--models', nargs='+', default=DEFAULT_MODELS, choices=list(BACKBONES))
    # The defaults take ~10 min (estimated) on the 2-core CPU this was written on;
    # the The run of docs/notes/measurements.md adds 800x1344 and the full sweep (26.5 min).
    parser.add_argument('--sizes', nargs='+', default=['224', '512'],
                        help='sizes of the main table: 224, 512, 800x1344 or any HxW')
    parser.add_argument('--sweep', nargs='*', type=int, default=[224, 448, 896],
                        help='square input sides of the time sweep (none: no sweep)')
    parser.add_argument('--sweep-models', nargs='+', default=None, choices=list(BACKBONES),
                        help='default: --models plus FEC-Small nofold when FEC-Small is in')
    parser.add_argument('--quick', action='store_true',
                        help='224 only, sweep 224 448, one timed step')
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: default)')
    parser.add_argument('--repeat', type=int, default=2, help='timed steps (at least)')
    parser.add_argument('--min-time', type=float, default=1.0,
                        help='seconds of timed steps (at least; at most 50 steps)')
    parser.add_argument('--timeout', type=float, default=900, help='seconds per figure')
    parser.add_argument('--out', type=Path, default=None,
                        help='folder for backbones.md, backbones.json and the sweep PNG')
    parser.add_argument('--replot', type=Path, default=None,
                        help="only redraw the PNG (into --out) from a run's backbones.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.sweep, args.repeat = ['224'], [224, 448], 1
    sizes = {}
    for s in args.sizes:
        try:
            h, w = SIZES.get(s) or tuple(int(v) for v in s.lower().split('x'))
        except ValueError:
            parser.error(f'--sizes: {s!r} is not 224, 512, 800x1344 or HxW')
        sizes[s] = (h, w)
    args.sizes = sizes
    if any(side <= 0 for side in args.sweep):
        parser.error(f'--sweep sides must be positive, got {args.sweep}')
    if args.sweep_models is None:
        args.sweep_models = list(args.models) + (
            ['FEC-Small nofold'] if 'FEC-Small' in args.models else [])
    return args


def run(args) -> dict:
    """Every figure, each in its own process; returns the results and tables."""
    import fec_mm  # noqa: F401  (FEC and its FLOP handles)
    if any(BACKBONES[m][0] == 'mmpretrain' for m in set(args.models) | set(args.sweep_models)):
        import mmpretrain.models  # noqa: F401  (registers the backbones)
    rate_res = run_fresh(dict(kind='matmul', device=args.device, threads=args.threads,
                              min_time=args.min_time), args.timeout)
    if rate_res is None and args.device == 'cuda':
        raise SystemExit('--device cuda: the matmul measurement failed (see above)')
    rate = rate_res['gflops_per_s'] if rate_res else None
    results: Dict[str, Dict[str, dict]] = {}
    for size_name, size in args.sizes.items():
        results[size_name] = {}
        for name in args.models:
            results[size_name][name] = measure_model(name, size, args)
            print(f'{size_name} {name}: {results[size_name][name]}', file=sys.stderr,
                  flush=True)
    sweep: Dict[str, Dict[int, dict]] = {}
    for name in (args.sweep_models if args.sweep else []):
        sweep[name] = {}
        for side in args.sweep:
            sweep[name][side] = measure_model(name, (side, side), args, sweep=True,
                                              modes=('infer',))
            print(f'sweep {side} {name}: {sweep[name][side]}', file=sys.stderr, flush=True)
    threads = args.threads or torch.get_num_threads()
    where = (torch.cuda.get_device_name() if args.device == 'cuda'
             else f'CPU, {threads} thread(s)')
    header = (f'{where}, torch {torch.__version__}, float32, batch 1; float32 matmul rate '
              f'{_fmt(rate)} GFLOP/s (multiply-adds/s, 1024² matrices)')
    return dict(header=header, matmul_gflops_per_s=rate, results=results,
                sweep={n: {str(s): r for s, r in v.items()} for n, v in sweep.items()},
                main_table=main_table(results, rate),
                sweep_table=sweep_table(sweep, args.sweep) if sweep else [],
                _sweep=sweep)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.replot:
        if not args.out:
            raise SystemExit('--replot needs --out (where the PNG goes)')
        data = json.loads(args.replot.read_text())
        plot_sweep(data['sweep'], args.out / 'backbone_time_vs_side.png', data['header'])
        return
    out = run(args)
    text = [f'# Backbones side by side: {out["header"]}', '', *out['main_table'], '']
    if out['sweep_table']:
        text += ['## Inference time vs input side (square inputs)', '',
                 *out['sweep_table'], '']
    print('\n'.join(text))
    if args.out:
        _write_atomic(args.out / 'backbones.md', '\n'.join(text) + '\n')
        data = {k: v for k, v in out.items() if not k.startswith('_')}
        _write_atomic(args.out / 'backbones.json', json.dumps(data, indent=1) + '\n')
        if out['_sweep']:
            plot_sweep(out['_sweep'], args.out / 'backbone_time_vs_side.png', out['header'])


if __name__ == '__main__':
    main()
