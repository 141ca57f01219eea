"""Time the cluster-map tool on one image: FEC-Small, 512×512, model building excluded.

What ``tools/visualization/vis_clusters.py`` does after building the model,
phase by phase, on scikit-image's astronaut (a 512×512 photograph):

- ``maps``: :func:`fec_mm.visualization.cluster_maps` (padding, one forward
  under ``no_grad`` with the recorder and the branch hooks, the trace of
  every stage to pixels, cropping);
- ``numbers``: the per-stage numbers (``stats.stage_stats``);
- ``views``: the three stage views (fills and boundaries);
- ``sheet``: the sheet with its legend (matplotlib, Agg);
- ``png``: writing the four PNGs;

and, for comparison, the plain forward of the backbone (no recorder), timed
in turn with ``maps``. Time:
the minimum over ``--repeat`` runs after one untimed run (the figure least
disturbed by other processes on a shared machine), per phase and for the
whole (all phases in turn), the latter also as CPU time of this process
(``time.process_time``: with one torch thread, about what the wall time
would be on an idle core). The table prints the CPU, the torch threads and
the load average, since other jobs change the figures.

    python tools/analysis_tools/benchmark_vis_clusters.py [--settings cls seg det] [--repeat 5]
"""
import argparse
import os
import tempfile
import time
from typing import Dict, List

import torch
from skimage import data

from fec_mm.measure import best_time, cpu_name
from fec_mm.models import FEC
from fec_mm.visualization import cluster_maps
from fec_mm.visualization.cli import IMAGENET_MEAN, IMAGENET_STD
from fec_mm.visualization.render import save_png
from fec_mm.visualization.stats import stage_stats
from fec_mm.visualization.views import ViewOptions, draw_cluster_sheet, render_views

# Centers and folds of the authors' tasks (docs/notes/design.md §3), all at 512×512.
SETTINGS = {
    'cls': dict(num_centers=(4, 4, 2, 2), folds=(1, 1, 1, 1)),
    'seg': dict(num_centers=(10, 10, 5, 5), folds=(1, 1, 1, 1)),
    'det': dict(num_centers=(7, 7, 7, 7), folds=(2, 2, 1, 1)),
}


def benchmark(setting: str, repeat: int) -> Dict[str, float]:
    """Seconds per phase for one setting."""
    torch.manual_seed(0)
    backbone = FEC('small', **SETTINGS[setting]).eval()
    image = data.astronaut()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    x = ((torch.from_numpy(image).permute(2, 0, 1).float() - mean) / std)[None]
    options = ViewOptions()
    state: Dict[str, object] = {}

    def plain():
        with torch.no_grad():
            backbone(x)

    def maps():
        state['maps'] = cluster_maps(backbone, x)

    def numbers():
        stage_stats(state['maps'])

    def views():
        state['views'], state['report'], state['layers'] = render_views(image, state['maps'],
                                                                        options)

    def sheet():
        state['sheet'] = draw_cluster_sheet(image, state['layers'], state['report'])

    def png():
        with tempfile.TemporaryDirectory() as tmp:
            for name, view in state['views'].items():
                save_png(os.path.join(tmp, f'{name}.png'), view)
            save_png(os.path.join(tmp, 'sheet.png'), state['sheet'])

    # The plain forward and the recorded one in turn, so that a busy phase
    # of a shared machine hits both alike: their difference is the recording.
    plain(), maps()
    times = {plain: [], maps: []}
    for _ in range(repeat):
        for fn in times:
            start = time.perf_counter()
            fn()
            times[fn].append(time.perf_counter() - start)
    row = {'plain forward': min(times[plain]), 'maps': min(times[maps])}
    for name, fn in (('numbers', numbers), ('views', views), ('sheet', sheet), ('png', png)):
        row[name] = best_time(fn, repeat)
    row['sum of phases'] = sum(v for k, v in row.items() if k != 'plain forward')

    def pipeline():
        for fn in (maps, numbers, views, sheet, png):
            fn()
    pipeline()
    wall, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        pipeline()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    row['whole: wall'] = min(wall)
    row['whole: CPU'] = min(cpu)
    return row


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description='Time the cluster-map tool (FEC-Small, 512x512)')
    parser.add_argument('--settings', nargs='+', default=['cls', 'seg', 'det'],
                        choices=sorted(SETTINGS))
    parser.add_argument('--repeat', type=int, default=5)
    parser.add_argument('--threads', type=int, help='torch threads (default: torch\'s)')
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = {s: benchmark(s, args.repeat) for s in args.settings}
    phases = list(next(iter(rows.values())))
    print(f'FEC-Small, 512x512 astronaut, batch 1, CPU: {cpu_name()} ({os.cpu_count()} cores), '
          f'torch threads {torch.get_num_threads()}, load average '
          f'{" ".join(f"{v:.1f}" for v in os.getloadavg())}; seconds, min of {args.repeat}')
    print()
    print('| setting | ' + ' | '.join(phases) + ' |')
    print('|---' * (len(phases) + 1) + '|')
    for s, row in rows.items():
        c = SETTINGS[s]
        label = f"{s} (centers {c['num_centers']}, folds {c['folds']})"
        print(f'| {label} | ' + ' | '.join(f'{row[p]:.3f}' for p in phases) + ' |')


if __name__ == '__main__':
    main()
