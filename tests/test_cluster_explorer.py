"""The interactive cluster explorer (``vis_clusters.py --html``): the embedded
data against the recorded forward pass, bad input with nothing written, and
the page driven in headless Chromium (Debian's ``chromium``, through
Playwright; ``make test`` installs both, see tools/setup_env.sh): hovering,
clicking, choosing a cluster, stepping stages with the keyboard, the mixer
view and the class selector, each compared with what Python computes from
the same :class:`ClusterMaps`; no console error, no network request; load
file size at detection size (load time: benchmark_explorer.py)."""
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from demo_config_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from PIL import Image
from skimage import data
from skimage.measure import label
from tiny_classifier import ARCH

from fec_mm.models import FEC
from fec_mm.visualization import cluster_maps
from fec_mm.visualization.cli import build_parser, main, prepare_from_config, view_options
from fec_mm.visualization.contributions import class_contributions
from fec_mm.visualization.explorer import (
    COS_SCALE,
    explorer_payload,
    payload_arrays,
    write_explorer,
)
from fec_mm.visualization.stats import count_components, stage_stats
from fec_mm.visualization.views import ViewOptions

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = '/usr/bin/chromium'
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--no-first-run']
# Where the browser test also writes its screenshot for the docs (optional).
SCREENSHOT_ENV = 'FEC_MM_EXPLORER_SCREENSHOT'


def read_payload(path: Path) -> dict:
    page = path.read_text()
    found = re.search(r'<script id="fec-data" type="application/json">(.*?)</script>', page,
                      re.S)
    return json.loads(found.group(1).replace('<\\/', '</'))


@pytest.fixture(scope='module')
def photos(tmp_path_factory):
    """Real photographs: the astronaut (512x512), an odd-sized coffee crop,
    and the rocket cropped to 384x640 (the detection pipeline makes it 800x1333)."""
    root = tmp_path_factory.mktemp('photos')
    out = SimpleNamespace(astronaut=root / 'astronaut.png', coffee=root / 'coffee_odd.png',
                          rocket=root / 'rocket.png')
    Image.fromarray(data.astronaut()).save(out.astronaut)
    Image.fromarray(data.coffee()[:141, :203]).save(out.coffee)
    Image.fromarray(data.rocket()[:384]).save(out.rocket)
    return out


# ---------------------------------------------------------------- the data --

@pytest.fixture(scope='module')
def tiny(photos):
    """A tiny FEC with folds on the odd-sized photograph: maps, payload, image."""
    torch.manual_seed(0)
    backbone = FEC(arch=ARCH, num_centers=(2, 2, 1, 1), folds=(2, 1, 1, 1),
                   out_indices=(3,)).eval()
    rgb = np.array(Image.open(photos.coffee).convert('RGB'))
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() - 127.5) / 127.5
    maps = cluster_maps(backbone, x)
    fc = torch.nn.Linear(32, 3)
    options = ViewOptions(groups=3, fc=fc, class_names=['a', 'b', 'c'])
    payload = explorer_payload(rgb, maps, options, meta=dict(image='coffee'))
    return SimpleNamespace(maps=maps, payload=payload, arrays=payload_arrays(payload), fc=fc,
                           rgb=rgb)


def test_payload_is_the_recorded_forward_pass(tiny):
    maps, p, a = tiny.maps, tiny.payload, tiny.arrays
    H, W = maps.image_size
    assert (H, W) == (141, 203) and p['stem'] == [36, 51]
    rows0, cols0 = p['stem']
    stats = stage_stats(maps)
    for k in range(1, maps.num_stages):
        ids = a[f'stages.{k - 1}.ids']
        assert np.array_equal(ids, maps.stem_maps[k][0, :rows0, :cols0].numpy())
        # Expanded to pixels (4x4 per stem token, cropped) it is the pixel map.
        pixels = ids.repeat(4, 0).repeat(4, 1)[:H, :W]
        assert np.array_equal(pixels, maps.pixel_maps[k][0].numpy())
        sizes = np.bincount(pixels.ravel(), minlength=len(a[f'stages.{k - 1}.sizes']))
        assert np.array_equal(a[f'stages.{k - 1}.sizes'], sizes)
        pieces = a[f'stages.{k - 1}.pieces']
        assert pieces.sum() == count_components(ids)
        assert pieces.sum() / (sizes > 0).sum() == pytest.approx(stats[k - 1]['fragmentation'])
        some = int(ids[7, 9])
        assert pieces[some] == label(ids == some, background=0, connectivity=1).max()
        # The cosine of stem token (7, 9)'s stage k-1 token with its center.
        prev = int(maps.stem_maps[k - 1][0, 7, 9])
        assert a[f'stages.{k - 1}.cos'][7, 9] == maps.poolings[k - 1].cos[0, 0].flatten()[prev]
    assert [b['name'] for b in p['blocks']] == ['0.0', '1.0', '2.0', '3.0']
    for i, block in enumerate(p['blocks']):
        s = block['stage']
        record = maps.encoder(s, 0)
        assert np.array_equal(a[f'blocks.{i}.ids'], record.index[0].numpy())
        cos = a[f'blocks.{i}.cos'] / COS_SCALE - 1
        assert np.abs(cos - record.cos[0].numpy()).max() <= 0.5 / COS_SCALE + 1e-7
        _, on_pixels = maps.head_maps(s, 0)
        for h in block['heads']:
            counts = np.bincount(on_pixels[0, h].flatten().numpy(), minlength=record.num_centers)
            assert np.array_equal(a[f'blocks.{i}.sizes'][h], counts)
    assert p['blocks'][0]['fold'] == 2 and p['blocks'][0]['centers'] == [4, 4]
    # Merge groups: one per final cluster, absent clusters -1.
    group_of = a['groups.group_of']
    final = maps.final_map[0].numpy()
    assert set(np.unique(group_of[final])) == {0, 1, 2}
    # Contributions: exact, and they sum to the logits.
    contributions = a['classification.contributions']
    ref = class_contributions(maps.final, tiny.fc)[0].detach().numpy()
    assert np.array_equal(contributions, ref.astype(np.float32))
    assert np.allclose(contributions.sum(1), a['classification.logits'], rtol=1e-5, atol=1e-6)
    assert p['classification']['target'] == int(ref.sum(1).argmax())


def test_write_is_atomic(tiny, tmp_path, monkeypatch):
    out = tmp_path / 'e.html'
    assert write_explorer(str(out), tiny.rgb, tiny.maps, ViewOptions()) == str(out)
    assert read_payload(out)['image_size'] == [141, 203]

    def fail(src, dst):
        raise OSError(28, 'No space left on device')
    monkeypatch.setattr(os, 'replace', fail)
    with pytest.raises(ValueError, match='cannot write: .*No space left'):
        write_explorer(str(tmp_path / 'f.html'), tiny.rgb, tiny.maps, ViewOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ['e.html']


def _bad_cli(argv, message, tmp_path, capsys):
    before = sorted(tmp_path.rglob('*'))
    assert main([str(a) for a in argv]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err), err
    assert sorted(tmp_path.rglob('*')) == before  # nothing written


def test_bad_input_is_named_and_nothing_written(photos, tmp_path, capsys):
    cls = ROOT / 'configs' / 'fec_small_in1k.py'
    html = tmp_path / 'out.html'
    _bad_cli([tmp_path / 'none.jpg', '--arch', 'small', '--html', html],
             'image not found: .*none.jpg', tmp_path, capsys)
    resnet = tmp_path / 'resnet.py'
    resnet.write_text("_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'\n")
    _bad_cli([photos.coffee, resnet, '--html', html], 'model.backbone is ResNet, not FEC',
             tmp_path, capsys)
    regular = tmp_path / 'file.txt'
    regular.write_text('x')
    _bad_cli([photos.coffee, cls, '--html', regular / 'out.html'],
             r'--html .*file.txt/out.html: .*file.txt is a file, not a folder', tmp_path,
             capsys)
    _bad_cli([photos.coffee, cls, '--html', tmp_path / 'no' / 'out.html'],
             'the folder .*no does not exist', tmp_path, capsys)
    _bad_cli([photos.coffee, cls, '--html', tmp_path], 'is a folder; give a file name',
             tmp_path, capsys)
    if os.geteuid() != 0:  # root writes into any folder of a writable file system
        locked = tmp_path / 'locked'
        locked.mkdir(mode=0o555)
        _bad_cli([photos.coffee, cls, '--html', locked / 'out.html'], 'is not writable',
                 tmp_path, capsys)


# ------------------------------------------------------------- the browser --

def _browser_or_skip():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f'no {CHROMIUM}: install Debian\'s chromium (make setup '
                    'EXTRAS=browser, as root) to run the browser tests')
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip('playwright is not installed (make setup EXTRAS=browser)')
    return sync_playwright


@pytest.fixture(scope='module')
def browser():
    sync_playwright = _browser_or_skip()
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Page:
    """One explorer page, with the console messages and requests it made."""

    def __init__(self, browser, path: Path, width=1400, height=900):
        self.page = browser.new_page(viewport=dict(width=width, height=height))
        self.console, self.requests = [], []
        self.page.on('console', lambda m: self.console.append((m.type, m.text)))
        self.page.on('pageerror', lambda e: self.console.append(('pageerror', str(e))))
        self.page.on('request', lambda r: self.requests.append(r.url))
        self.url = path.resolve().as_uri()
        self.page.goto(self.url)
        self.page.wait_for_function('window.__explorer && (window.__explorer.ready || '
                                    'window.__explorer.error)', timeout=30000)
        assert self.js('window.__explorer.error') is None
        self.ready_ms = self.js('window.__explorer.readyMs')
        self.size = tuple(read_payload(path)['image_size'])
        self.stem = tuple(self.js('window.__explorer.stem'))

    def js(self, expr):
        return self.page.evaluate(expr)

    def _at(self, x, y):
        box = self.page.locator('#main').bounding_box()
        H, W = self.size
        return box['x'] + (x + 0.5) * box['width'] / W, box['y'] + (y + 0.5) * box['height'] / H

    def hover(self, x, y):
        self.page.mouse.move(*self._at(x, y))

    def click(self, x, y):
        self.page.mouse.click(*self._at(x, y))

    def lit(self, view='main'):
        """The lit pixels of a view, as an (H, W) bool mask."""
        tokens = self.js(f'window.__explorer.lit({json.dumps(view)})')
        mask = np.zeros(self.stem[0] * self.stem[1], bool)
        mask[tokens] = True
        H, W = self.size
        return mask.reshape(self.stem).repeat(4, 0).repeat(4, 1)[:H, :W]

    def panel(self):
        return {r['layer']: r for r in self.js('window.__explorer.panel()')}

    def check_clean(self):
        assert [m for m in self.console if m[0] in ('error', 'pageerror', 'warning')] == []
        assert all(u == self.url or u.startswith('data:') for u in self.requests), \
            self.requests

    def close(self):
        self.page.close()


def _check_chain(page, maps, x, y, active):
    """Every stage view lights exactly the members of (x, y)'s cluster; the
    panel's numbers are the recorded ones."""
    rows = page.panel()
    assert rows[f'stage{active}']['active']
    for k in range(1, maps.num_stages):
        pm = maps.pixel_maps[k][0].numpy()
        cid = pm[y, x]
        members = pm == cid
        assert np.array_equal(page.lit(f'stage{k}'), members), (k, x, y)
        if k == active:
            assert np.array_equal(page.lit('main'), members)
        cells = rows[f'stage{k}']['cells']
        prev = int(maps.stem_maps[k - 1][0, y // 4, x // 4])
        cos = float(maps.poolings[k - 1].cos[0, 0].flatten()[prev])
        assert int(cells[1]) == cid and int(cells[2]) == members.sum()
        assert float(cells[3]) == pytest.approx(cos, abs=6e-5)
        assert int(cells[4]) == label(members, background=0, connectivity=1).max()


@pytest.fixture(scope='module')
def classifier(photos, tmp_path_factory):
    """fec_small_in1k.py (random weights) on the astronaut, through the CLI's
    own preparation; the explorer written by write_explorer with 4 groups."""
    args = build_parser().parse_args([str(photos.astronaut),
                                      str(ROOT / 'configs' / 'fec_small_in1k.py'),
                                      '--groups', '4'])
    torch.manual_seed(0)
    prepared = prepare_from_config(args)
    options = view_options(args, prepared)
    maps = cluster_maps(prepared.backbone, prepared.inputs, prepared.image_size)
    path = tmp_path_factory.mktemp('cls') / 'astronaut.html'
    write_explorer(str(path), prepared.display, maps, options)
    with torch.no_grad():
        contributions = class_contributions(maps.final, options.fc)[0].numpy()
    return SimpleNamespace(maps=maps, path=path, contributions=contributions)


def test_explorer_in_chromium(browser, classifier, tmp_path):
    maps, c = classifier.maps, classifier.contributions
    page = Page(browser, classifier.path)
    assert page.size == (224, 224) and page.js('window.__explorer.lit("main")') is None
    # Hover: the chain of clusters, stage by stage (a corner and edge pixels too).
    for x, y in [(100, 60), (0, 0), (223, 223), (37, 190)]:
        page.hover(x, y)
        _check_chain(page, maps, x, y, active=1)
    # Keyboard: up to the final stage and down again, same pixel.
    page.page.keyboard.press('ArrowUp')
    page.page.keyboard.press('ArrowUp')
    _check_chain(page, maps, 37, 190, active=3)
    page.page.keyboard.press('ArrowDown')
    _check_chain(page, maps, 37, 190, active=2)
    # Click pins the pixel: moving away changes nothing.
    page.click(150, 100)
    page.hover(10, 10)
    _check_chain(page, maps, 150, 100, active=2)
    assert '[pinned]' in page.page.inner_text('#pixel')
    # Choose a cluster from the panel: all its members lit.
    pm2 = maps.pixel_maps[2][0].numpy()
    cid = int(pm2[200, 30])
    page.page.fill('#cluster', str(cid))
    page.page.click('#light')
    assert np.array_equal(page.lit('main'), pm2 == cid)
    assert int(page.panel()['stage2']['cells'][1]) == cid
    page.page.keyboard.press('ArrowRight')  # the next non-empty cluster
    present = np.unique(pm2)
    nxt = int(present[(np.searchsorted(present, cid) + 1) % len(present)])
    assert np.array_equal(page.lit('main'), pm2 == nxt)
    # The class selector: contributions of the final cluster, painted by sign.
    page.page.keyboard.press('Escape')
    second = int(np.argsort(-c.sum(1))[1])
    page.page.select_option('#cls', str(second))
    assert page.js('window.__explorer.state.paint') == 'contribution'
    x, y = 120, 80
    page.hover(x, y)
    fid = int(maps.final_map[0, y, x])
    cell = page.panel()['stage3']['cells'][-1]
    assert float(cell) == pytest.approx(float(c[second, fid]), rel=1e-4, abs=1e-7)
    t = (y // 4) * page.stem[1] + x // 4
    r, g, b, a = page.js(f'window.__explorer.overlayRGBA("main", {t})')
    assert a < 128 and (r == 255 if c[second, fid] > 0 else b == 255)
    # The mixer view: block 1.0 (index 3 of 14), head 2; block 0.1, head 1.
    page.page.select_option('#view', 'enc')
    for index, (s, j, h, x, y) in [(3, (1, 0, 2, 90, 140)), (1, (0, 1, 1, 223, 5))]:
        page.page.select_option('#block', str(index))
        page.page.select_option('#head', str(h))
        page.hover(x, y)
        centers = maps.head_maps(s, j)[1][0, h].numpy()
        members = centers == centers[y, x]
        assert np.array_equal(page.lit('main'), members)
        cells = page.panel()[f'block{index}_{h}']['cells']
        token = int(maps.stem_maps[s][0, y // 4, x // 4])
        cos = float(maps.encoder(s, j).cos[0, h].flatten()[token])
        assert int(cells[1]) == centers[y, x] and int(cells[2]) == members.sum()
        assert float(cells[3]) == pytest.approx(cos, abs=1e-4)
        assert int(cells[4]) == label(members, background=0, connectivity=1).max()
    page.check_clean()
    page.close()


def test_fec_small_512_page(browser, photos, tmp_path):
    """512x512 with FEC-Small (every block and head embedded) opens and
    lights the recorded chain (its load time is measured by
    tools/analysis_tools/benchmark_explorer.py, not asserted here)."""
    torch.manual_seed(0)
    backbone = FEC(arch='small').eval()
    rgb = np.array(Image.open(photos.astronaut).convert('RGB'))
    x = (torch.from_numpy(rgb).permute(2, 0, 1).float() - 127.5) / 127.5
    maps = cluster_maps(backbone, x)
    path = tmp_path / 'astronaut512.html'
    write_explorer(str(path), rgb, maps, ViewOptions(groups=6),
                   meta=dict(image='skimage astronaut', arch='small (random weights)'))
    page = Page(browser, path, width=1500, height=1000)
    page.hover(256, 153)
    _check_chain(page, maps, 256, 153, active=1)
    page.page.keyboard.press('ArrowUp')
    page.check_clean()
    target = os.environ.get(SCREENSHOT_ENV)
    if target:  # the docs' screenshot (docs/user_guides/cluster_explorer.md)
        shot = tmp_path / 'shot.png'
        page.page.screenshot(path=str(shot))
        Image.open(shot).convert('RGB').quantize(192).save(target, optimize=True)
    page.close()


def test_detection_size_file(browser, photos, tmp_path):
    """fec_maskrcnn.py on a photograph resized to 800x1333 (padded 800x1344),
    every block and head: the file stays under 10 MB, and opens."""
    out = tmp_path / 'rocket.html'
    assert main([str(photos.rocket), str(ROOT / 'configs' / 'fec_maskrcnn.py'),
                 '--html', str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ['rocket.html']
    payload = read_payload(out)
    assert payload['image_size'] == [800, 1333] and len(payload['blocks']) == 14
    size = out.stat().st_size
    page = Page(browser, out, width=1600, height=1000)
    assert size < 10e6
    page.hover(700, 400)
    assert page.lit('main').sum() > 0
    page.check_clean()
    page.close()
