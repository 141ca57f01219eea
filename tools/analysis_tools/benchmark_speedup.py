"""FEC before and after a change, side by side in one run: two source trees of
fec_mm, the same models, sizes and machine, interleaved.

Usage (the table of docs/notes/measurements.md, "Speed of the fused path"):
    python tools/analysis_tools/benchmark_speedup.py --before HEAD~3 --threads 1 \\
        --sizes 224 512 --models FEC-Small FEC-Base ResNet-18

``--before`` / ``--after``: a git ref of this repository (its files are
exported to a temporary folder, with the built ``fec_mm/_ext`` of this
checkout copied in: the comparison is of the Python side) or a path to a
source tree; ``--after`` defaults to this checkout. Models, sizes, FEC's
centers per size and the timed steps are those of ``benchmark_backbones.py``
(eval forward under ``torch.no_grad()``; training step = forward, loss,
backward, SGD step), batch 1, float32, random weights.

Every figure is measured in its own fresh Python process (``PYTHONPATH`` =
the tree), and the figures of the two trees alternate, ``--rounds`` times;
each figure is the fastest of its rounds. On a shared machine the ratios
(after / before, FEC / ResNet-18, share of the matmul rate) are what counts:
the float32 matmul rate is measured in the same run, in a fresh process
before every round, and the best is used. GFLOPs: mmengine's counter with
FEC's ops (``fec_mm.analysis.count_flops``), training counted as 3 forwards.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
MODELS = ('FEC-Small', 'FEC-Base', 'ResNet-18')


# ------------------------------------------------------------------ child side
def child(spec: dict) -> dict:
    """One figure, in this fresh process (fec_mm from the tree on PYTHONPATH)."""
    import torch
    sys.path.insert(0, str(HERE))
    import benchmark_backbones as bb

    from fec_mm.measure import measure_step
    torch.set_num_threads(spec['threads'])
    if spec['kind'] == 'matmul':
        return dict(gflops_per_s=bb.matmul_rate('cpu', min_time=spec['min_time']))
    if bb.BACKBONES[spec['model']][0] == 'mmpretrain':
        import mmpretrain.models  # noqa: F401  (registers the backbones)
    size = tuple(spec['size'])
    if spec['kind'] == 'flops':
        from fec_mm.analysis import count_flops
        model = bb.build(spec['model'], size, False)
        model.eval()
        with torch.no_grad():
            return dict(gflops=count_flops(model, (torch.randn(1, 3, *size),)).flops / 1e9)
    base = dict(model=spec['model'], device='cpu', sweep=False, mode=spec['mode'])
    step = bb._step(base, size)
    warmup = bb._step(base, (64, 64))
    return measure_step(step, warmup, 'cpu', 'time', spec['repeat'], spec['min_time'])


# ------------------------------------------------------------------ parent side
def export_tree(ref: str, dest: Path) -> Path:
    """The files of ``ref`` (a git ref of this repository, or a folder) as a
    source tree, with this checkout's built extension."""
    if Path(ref).is_dir():
        return Path(ref).resolve()
    archive = subprocess.run(['git', '-C', str(REPO), 'archive', ref], check=True,
                             capture_output=True).stdout
    dest.mkdir(parents=True)
    subprocess.run(['tar', '-x', '-C', str(dest)], input=archive, check=True)
    for ext in (REPO / 'fec_mm').glob('_ext*.so'):
        shutil.copy2(ext, dest / 'fec_mm' / ext.name)
    return dest


def run_child(tree: Path, spec: dict, timeout: float) -> Optional[dict]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    proc = subprocess.run([sys.executable, __file__, '--child', json.dumps(spec)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        sys.stderr.write(f'{spec} in {tree} failed:\n{proc.stderr[-3000:]}\n')
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: List[dict], rate: float) -> List[str]:
    head = ['input', 'backbone', 'mode', 'GFLOPs', 'before ms', 'after ms', 'after / before',
            'before (of matmul)', 'after (of matmul)', 'after / ResNet-18']
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    resnet = {(r['size'], r['mode']): r['after'] for r in rows if r['model'] == 'ResNet-18'}

    def share(t: Optional[float], g: Optional[float], factor: int) -> str:
        if not (t and g):
            return '–'
        achieved = factor * g / t
        return f'{achieved:.1f} ({100 * achieved / rate:.0f} %)'

    for r in rows:
        factor = 3 if r['mode'] == 'train' else 1
        b, a, g = r['before'], r['after'], r['gflops']
        ref = resnet.get((r['size'], r['mode']))
        lines.append('| ' + ' | '.join([
            r['size'].replace('x', '×'), r['model'], r['mode'],
            '–' if g is None else f'{g:.2f}',
            '–' if b is None else f'{b * 1e3:.1f}', '–' if a is None else f'{a * 1e3:.1f}',
            f'{a / b:.2f}' if a and b else '–', share(b, g, factor), share(a, g, factor),
            f'{a / ref:.2f}' if a and ref else '–']) + ' |')
    return lines


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--before', help='git ref or source folder (required)')
    parser.add_argument('--after', default=str(REPO), help='git ref or source folder')
    parser.add_argument('--models', nargs='+', default=list(MODELS), choices=list(MODELS))
    parser.add_argument('--sizes', nargs='+', default=['224', '512'], choices=['224', '512'])
    parser.add_argument('--modes', nargs='+', default=['infer', 'train'],
                        choices=['infer', 'train'])
    parser.add_argument('--threads', type=int, default=1)
    parser.add_argument('--rounds', type=int, default=2, help='alternations before/after')
    parser.add_argument('--repeat', type=int, default=3, help='timed steps (at least)')
    parser.add_argument('--min-time', type=float, default=1.0, help='seconds of timed steps')
    parser.add_argument('--timeout', type=float, default=900, help='seconds per figure')
    parser.add_argument('--child', default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child and not args.before:
        parser.error('--before is required')
    return args


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return
    common = dict(threads=args.threads, repeat=args.repeat, min_time=args.min_time)
    sizes = {'224': [224, 224], '512': [512, 512]}
    with tempfile.TemporaryDirectory() as tmp:
        trees = {'before': export_tree(args.before, Path(tmp) / 'before'),
                 'after': export_tree(args.after, Path(tmp) / 'after')}
        rates: List[float] = []
        best: Dict[tuple, Dict[str, float]] = {}
        flops: Dict[tuple, Optional[float]] = {}
        for size in args.sizes:
            for model in args.models:
                res = run_child(trees['after'], dict(common, kind='flops', model=model,
                                                     size=sizes[size]), args.timeout)
                flops[size, model] = res['gflops'] if res else None
        for _ in range(args.rounds):
            res = run_child(trees['after'], dict(common, kind='matmul'), args.timeout)
            if res:
                rates.append(res['gflops_per_s'])
            for size in args.sizes:
                for model in args.models:
                    for mode in args.modes:
                        for which in ('before', 'after'):
                            if model == 'ResNet-18' and which == 'before':
                                continue  # no fec_mm code in it
                            spec = dict(common, kind='time', model=model, mode=mode,
                                        size=sizes[size])
                            res = run_child(trees[which], spec, args.timeout)
                            if res:
                                slot = best.setdefault((size, model, mode), {})
                                slot[which] = min(slot.get(which, res['time_s']),
                                                  res['time_s'])
                            print(f'{size} {model} {mode} {which}: {res}', file=sys.stderr,
                                  flush=True)
    if not rates:
        raise SystemExit('the matmul measurement failed (see above)')
    rate = max(rates)
    rows = []
    for (size, model, mode), t in best.items():
        after = t.get('after')
        rows.append(dict(size=size, model=model, mode=mode, gflops=flops[size, model],
                         before=t.get('before'), after=after))
    after_name = 'this checkout' if args.after == str(REPO) else args.after
    print(f'# FEC before ({args.before}) and after ({after_name}): CPU, {args.threads} '
          f'thread(s), float32, batch 1; float32 matmul rate {rate:.1f} GFLOP/s '
          f'(multiply-adds/s, 1024², best of {len(rates)})\n')
    print('\n'.join(table(rows, rate)))


if __name__ == '__main__':
    main()
