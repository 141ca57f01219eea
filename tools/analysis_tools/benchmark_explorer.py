"""Size and load time of the cluster explorer page (``vis_clusters.py --html``).

Two pages, each written once and then opened ``--repeat`` times in a fresh tab
of headless Chromium (Debian's ``chromium``, driven by Playwright):

- ``cls512``: scikit-image's astronaut (512×512) through FEC-Small (random
  weights, every block and head embedded, 6 merge groups);
- ``det``: scikit-image's rocket cropped to 384×640, through
  ``configs/fec_maskrcnn.py``'s pipeline (resized to 800×1333, padded to
  800×1344; 7×7 centers, folds 2, 2, 1, 1).

"Ready" is the page's own ``performance.now()`` when it has decoded its data
and drawn the first view (``window.__explorer.readyMs``), measured from the
navigation start. The table prints the file size, the minimum and maximum
ready time, the CPU and the load average (other jobs change the figures).

    python tools/analysis_tools/benchmark_explorer.py [--pages cls512 det] [--repeat 3]
"""
import argparse
import os
import tempfile
from pathlib import Path
from typing import List

import torch
from PIL import Image
from skimage import data

from fec_mm.measure import cpu_name
from fec_mm.models import FEC
from fec_mm.visualization import cluster_maps
from fec_mm.visualization.cli import main as vis_clusters_main
from fec_mm.visualization.explorer import write_explorer
from fec_mm.visualization.views import ViewOptions

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
PAGES = ('cls512', 'det')


def write_cls512(out: Path) -> None:
    """FEC-Small (random weights) on the 512×512 astronaut."""
    torch.manual_seed(0)
    backbone = FEC(arch='small').eval()
    rgb = data.astronaut()
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() - 127.5) / 127.5
    maps = cluster_maps(backbone, x)
    write_explorer(str(out), rgb, maps, ViewOptions(groups=6),
                   meta=dict(image='skimage astronaut', arch='small (random weights)'))


def write_det(out: Path) -> None:
    """The detection config's pipeline on a 384×640 crop of the rocket."""
    image = out.with_suffix('.png')
    Image.fromarray(data.rocket()[:384]).save(image)
    torch.manual_seed(0)
    if vis_clusters_main([str(image), str(ROOT / 'configs' / 'fec_maskrcnn.py'),
                          '--html', str(out)]) != 0:
        raise RuntimeError('vis_clusters.py --html failed on the detection page')


def ready_times(path: Path, repeat: int) -> List[float]:
    """Open ``path`` ``repeat`` times, each in a new tab; the page's ready time (ms)."""
    from playwright.sync_api import sync_playwright
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        for _ in range(repeat):
            page = browser.new_page(viewport=dict(width=1500, height=1000))
            page.goto(path.resolve().as_uri())
            page.wait_for_function('window.__explorer && (window.__explorer.ready || '
                                   'window.__explorer.error)', timeout=60000)
            error = page.evaluate('window.__explorer.error')
            if error is not None:
                raise RuntimeError(f'the explorer page {path} failed to load: {error}')
            times.append(float(page.evaluate('window.__explorer.readyMs')))
            page.close()
        browser.close()
    return times


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--pages', nargs='+', choices=PAGES, default=list(PAGES),
                        help='which pages to measure (default: both)')
    parser.add_argument('--repeat', type=int, default=3, help='openings per page (default 3)')
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error(f'--repeat must be >= 1, got {args.repeat}')
    if not os.path.exists(CHROMIUM):
        parser.error(f'{CHROMIUM} is missing: install Debian\'s chromium '
                     '(make setup EXTRAS=browser, as root)')
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.pages:
            path = Path(tmp) / f'{name}.html'
            (write_cls512 if name == 'cls512' else write_det)(path)
            times = ready_times(path, args.repeat)
            rows.append((name, path.stat().st_size / 1e6, min(times), max(times)))
    print(f'CPU: {cpu_name()} ({os.cpu_count()} cores), '
          f'load average {os.getloadavg()[0]:.1f}, {args.repeat} openings per page')
    print('| page | file size (MB) | ready, min (ms) | ready, max (ms) |')
    print('|---|---|---|---|')
    for name, size, lo, hi in rows:
        print(f'| {name} | {size:.2f} | {lo:.0f} | {hi:.0f} |')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
