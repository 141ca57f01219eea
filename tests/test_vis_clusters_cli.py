"""tools/visualization/vis_clusters.py: every config kind with random weights,
an odd-sized real photograph with --arch, correct RGB, and bad input named
with nothing written."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from demo_config_helpers import one_torch_thread  # noqa: F401  (autouse fixture)
from PIL import Image
from skimage import data

from fec_mm.models import FEC
from fec_mm.visualization.cli import prepare_from_config, run

ROOT = Path(__file__).resolve().parents[1]
# Detection and segmentation test pipelines resize to 800 / 512 short sides:
# smaller here, to keep the CPU test short (also exercises --cfg-options).
SMALL_DET = ['--cfg-options', 'test_dataloader.dataset.pipeline.1.scale=(192,128)']
SMALL_SEG = ['--cfg-options', 'test_dataloader.dataset.pipeline.1.scale=(256,96)']
CONFIGS = [('fec_small_in1k.py', ['--groups', '4', '--merge-feature', 'conv_f'], (224, 224)),
           ('fec_maskrcnn.py', SMALL_DET, (128, 190)),
           ('fec_retinanet.py', SMALL_DET, (128, 190)),
           # The authors' AlignResize resizes 96x143 to multiples of 32.
           ('fec_semfpn_ade20k.py', SMALL_SEG, (96, 160)),
           ('fec_upernet_ade20k.py', SMALL_SEG, (96, 143))]


@pytest.fixture(scope='module')
def photo(tmp_path_factory):
    """scikit-image's cat, cropped to an odd size (291 x 433)."""
    path = tmp_path_factory.mktemp('img') / 'chelsea_odd.png'
    Image.fromarray(data.chelsea()[:291, :433]).save(path)
    return path


def _pngs(out):
    files = sorted(out.glob('*.png'))
    for f in files:
        assert f.stat().st_size > 0
        Image.open(f).verify()
    return files


@pytest.mark.parametrize('config, options, size', CONFIGS)
def test_every_config_kind(config, options, size, photo, tmp_path):
    out = tmp_path / 'out'
    written = run([str(photo), str(ROOT / 'configs' / config), '--out-dir', str(out), '--json']
                  + options)
    names = sorted(Path(p).name for p in written)
    stages = [f'chelsea_odd_stage{k}.png' for k in (1, 2, 3)]
    assert set(stages) <= set(names) and 'chelsea_odd_sheet.png' in names
    assert len(_pngs(out)) == len(names) - 1
    report = json.loads((out / 'chelsea_odd_clusters.json').read_text())
    assert tuple(report['image_size']) == size
    assert [s['stage'] for s in report['stages']] == [1, 2, 3]
    scale = -(-512 // max(size))
    assert Image.open(out / stages[0]).size == (size[1] * scale, size[0] * scale)
    if config == 'fec_small_in1k.py':  # a classifier: its contributions are drawn
        assert 'chelsea_odd_merged_k4.png' in names and report['merge']['feature'] == 'conv_f'
        assert any(n.startswith('chelsea_odd_contribution_class') for n in names)
        c = report['classification']
        from mmpretrain.datasets.categories import IMAGENET_CATEGORIES
        assert c['target_name'] == IMAGENET_CATEGORIES[c['target_class']]  # ImageNet's names
        assert sum(c['contributions']) == pytest.approx(c['top'][0]['logit'], rel=1e-4, abs=1e-5)
    else:
        assert 'classification' not in report
    assert not list(tmp_path.glob('.vis_clusters-*'))


def test_odd_photograph_with_arch_alone_in_rgb(photo, tmp_path):
    out = tmp_path / 'out'
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'visualization' / 'vis_clusters.py'), str(photo),
         '--arch', 'small', '--block', '2.1', '--head', '0', '5', '--alpha', '0',
         '--groups', '5', '--merge-feature', 'pooled', '--merge-method', 'ward',
         '--out-dir', str(out), '--json'],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    names = sorted(p.name for p in _pngs(out))
    assert names == sorted(['chelsea_odd_sheet.png', 'chelsea_odd_merged_k5.png'] + [
        f'chelsea_odd_stage{k}.png' for k in (1, 2, 3)] + [
        f'chelsea_odd_block2.1_head{h}_{v}.png' for h in (0, 5) for v in ('grid', 'pixels')])
    report = json.loads((out / 'chelsea_odd_clusters.json').read_text())
    assert report['image_size'] == [291, 433] and report['padded_size'] == [320, 448]
    assert report['merge'] == dict(report['merge'], groups=5, feature='pooled', method='ward')
    assert sum(report['merge']['pixels_per_group']) == 291 * 433
    # --alpha 0: the photograph itself (enlarged x2) where no boundary is drawn,
    # in RGB order.
    rgb = data.chelsea()[:291, :433]
    view = np.asarray(Image.open(out / 'chelsea_odd_stage3.png'))[::2, ::2]
    same = (view == rgb).all(-1).mean()
    swapped = (view == rgb[..., ::-1]).all(-1).mean()
    assert same > 0.3 and swapped < 0.05, (same, swapped)


def test_arch_replaces_the_configs_backbone(photo, tmp_path):
    out = tmp_path / 'out'
    run([str(photo), str(ROOT / 'configs' / 'fec_small_in1k.py'), '--arch', 'base',
         '--stage', '3', '--out-dir', str(out), '--json'])
    report = json.loads((out / 'chelsea_odd_clusters.json').read_text())
    assert report['arch'] == 'base'
    # The config's head is FEC-Small's (320 inputs): no contributions for FEC-Base.
    assert 'classification' not in report
    assert sorted(p.name for p in _pngs(out)) == ['chelsea_odd_sheet.png',
                                                   'chelsea_odd_stage3.png']


def test_config_pipeline_keeps_rgb(tmp_path):
    red = tmp_path / 'red.png'
    Image.fromarray(np.full((100, 130, 3), (250, 10, 0), np.uint8)).save(red)
    from fec_mm.visualization.cli import build_parser
    args = build_parser().parse_args([str(red), str(ROOT / 'configs' / 'fec_small_in1k.py')])
    prepared = prepare_from_config(args)
    assert prepared.display.shape == (224, 224, 3)
    assert np.abs(prepared.display.astype(int) - (250, 10, 0)).max() <= 1
    # The model's own preprocessor turned it to RGB before normalising.
    torch.testing.assert_close(prepared.inputs[0, :, 5, 5],
                               (torch.tensor([250., 10., 0.]) - torch.tensor(
                                   [123.675, 116.28, 103.53])) / torch.tensor(
                                   [58.395, 57.12, 57.375]), atol=0.03, rtol=0)


def _bad(argv, match, tmp_path, exc=ValueError):
    out = tmp_path / 'never'
    with pytest.raises(exc, match=match):
        run([str(a) for a in argv] + ['--out-dir', str(out)])
    assert not out.exists()
    assert not list(tmp_path.glob('.vis_clusters-*'))


def test_bad_input_is_named_and_nothing_written(photo, tmp_path):
    cls = ROOT / 'configs' / 'fec_small_in1k.py'
    _bad([tmp_path / 'none.jpg', '--arch', 'small'], 'image not found: .*none.jpg', tmp_path,
         FileNotFoundError)
    broken = tmp_path / 'broken.jpg'
    broken.write_text('not an image')
    _bad([broken, '--arch', 'small'], 'cannot read image .*broken.jpg', tmp_path)
    resnet = tmp_path / 'resnet.py'
    resnet.write_text("_base_ = 'mmpretrain::resnet/resnet18_8xb32_in1k.py'\n")
    _bad([photo, resnet], 'model.backbone is ResNet, not FEC', tmp_path)
    base = tmp_path / 'fec_base.pth'
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in
                                FEC(arch='base').state_dict().items()}), base)
    _bad([photo, cls, base], r"FEC\(arch='small'\) cannot take these weights", tmp_path)
    _bad([photo, '--arch', 'small', base], 'another arch', tmp_path)
    _bad([photo, '--arch', 'small', tmp_path / 'none.pth'], 'checkpoint not found', tmp_path,
         FileNotFoundError)
    _bad([photo, cls, '--stage', '4'], 'no pooling stage 4: .* 1..3', tmp_path)
    _bad([photo, cls, '--stage', '0'], 'no pooling stage 0', tmp_path)
    _bad([photo, cls, '--block', '3.2'], 'no block 3.2: stage 3 has blocks 0..1', tmp_path)
    _bad([photo, cls, '--block', '5.0'], 'no stage 5 for block 5.0', tmp_path)
    _bad([photo, cls, '--block', 'x'], "--block 'x': expected STAGE.BLOCK", tmp_path)
    _bad([photo, cls, '--block', '2.0', '--head', '8'], 'no head 8 in block 2.0: .*0..7',
         tmp_path)
    _bad([photo, cls, '--groups', '0'], '--groups K must be >= 1, got 0', tmp_path)
    _bad([photo, cls, '--alpha', '1.5'], r'--alpha must be in \[0, 1\]', tmp_path)
    _bad([photo], 'give a CONFIG or --arch', tmp_path)
    _bad([photo, '--arch', 'small', '--cfg-options', 'train_cfg.max_epochs=1'],
         'only model.backbone', tmp_path)
    _bad([photo, '--arch', 'tiny'], "unknown arch 'tiny'", tmp_path)


def test_cli_reports_errors_without_a_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / 'tools' / 'visualization' / 'vis_clusters.py'),
         str(tmp_path / 'none.jpg'), '--arch', 'small', '--out-dir', str(tmp_path / 'o')],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(f'vis_clusters: error: image not found: '
                                          f'{tmp_path / "none.jpg"}')
    assert not (tmp_path / 'o').exists()


def test_context_cluster_blocks_traced_to_the_odd_photograph(photo, tmp_path):
    """--arch coc-tiny: one sheet per encoding block asked for; the JSON's
    per-head cluster counts are those of the backbone run on the normalised
    photograph zero-padded to its size divisor, cropped back to the photo."""
    import torch.nn.functional as F

    from fec_mm.models import ContextCluster
    from fec_mm.visualization.cli import IMAGENET_MEAN, IMAGENET_STD
    from fec_mm.visualization.coc_cluster_maps import coc_cluster_maps
    out = tmp_path / 'out'
    written = run([str(photo), '--arch', 'coc-tiny', '--stage', '2', '3', '--block', '3.1',
                   '--head', '0', '3', '--cfg-options', 'model.backbone.num_centers=2',
                   '--out-dir', str(out), '--json'])
    assert sorted(Path(p).name for p in written) == ['chelsea_odd_clusters.json',
                                                     'chelsea_odd_stage3_block1.png']
    assert len(_pngs(out)) == 1
    report = json.loads((out / 'chelsea_odd_clusters.json').read_text())
    assert report['backbone'] == 'ContextCluster' and report['arch'] == 'tiny'
    assert report['image_size'] == [291, 433] and report['padded_size'] == [320, 448]
    torch.manual_seed(0)  # the CLI's --seed: the same random weights
    model = ContextCluster('tiny', num_centers=2).eval()
    rgb = torch.from_numpy(data.chelsea()[:291, :433].copy()).permute(2, 0, 1).float()
    x = (rgb - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(
        3, 1, 1)
    blocks = coc_cluster_maps(model, F.pad(x, (0, 448 - 433, 0, 320 - 291))[None])
    assert [(b['stage'], b['block'], b['fold']) for b in report['blocks']] == [
        (k, j, (8, 4, 2, 1)[k]) for k, d in enumerate((3, 4, 5, 2)) for j in range(d)]
    for got, want in zip(report['blocks'], blocks):
        assert got['center_grid'] == list(want.center_grid)
        assert [h['clusters'] for h in got['heads']] == [
            int(p.unique().numel()) for p in want.pixels[0, :, :291, :433]]
    # Stage 0's 8x8 regions of 2x2 centers: the crop loses the bottom/right ones.
    assert max(h['clusters'] for h in report['blocks'][0]['heads']) <= 16 * 16


def test_context_cluster_bad_input_is_named(photo, tmp_path):
    coc = ROOT / 'configs' / 'demo' / 'coc_semfpn_demo.py'
    fec = tmp_path / 'fec_small.pth'
    torch.save(dict(state_dict={f'backbone.{k}': v for k, v in
                                FEC(arch='small').state_dict().items()}), fec)
    _bad([photo, coc, fec], f'ContextCluster cannot take the checkpoint {fec}: it holds FEC '
         'weights', tmp_path)
    _bad([photo, '--arch', 'coc-tiny', '--html', tmp_path / 'x.html'],
         r'--html is for FEC backbones only: for a ContextCluster .* \(options --stage, '
         '--block, --head', tmp_path)
    _bad([photo, '--arch', 'coc-tiny', '--groups', '3'], '--groups is for FEC backbones only',
         tmp_path)
    _bad([photo, coc, '--stage', '4'], 'no stage 4: the ContextCluster stages are 0..3',
         tmp_path)
    _bad([photo, coc, '--block', '3.2'], 'no block 3.2: stage 3 has blocks 0..1', tmp_path)
    _bad([photo, coc, '--block', '0.0', '--head', '4'], 'no head 4 in block 0.0: .*0..3',
         tmp_path)
    _bad([photo, coc, '--arch', 'small'], '--arch small is a FEC arch, but .*coc_semfpn_demo.py '
         'has a ContextCluster backbone', tmp_path)
    _bad([photo, '--arch', 'coc-huge'], "ContextCluster: unknown arch 'huge'", tmp_path)
