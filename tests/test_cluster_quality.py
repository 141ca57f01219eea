"""Partitions for the cluster-quality score (grid, SLIC at matched K, FEC's
traced final clusters) and tools/analysis_tools/cluster_quality.py end to end
on a tiny generated demo dataset with random weights."""
import importlib.util
import json
import math

import numpy as np
import pytest
import torch
from demo_config_helpers import (  # noqa: F401  (autouse fixture)
    REPO,
    one_torch_thread,
)
from mmengine.config import Config
from skimage import data
from skimage.transform import resize

from fec_mm.analysis.cluster_quality import choose_compactness, score_image
from fec_mm.analysis.partitions import (
    CoCPartitioner,
    FECPartitioner,
    backbone_from_config,
    grid_partition,
    slic_matched,
    upscale_labels,
)
from fec_mm.analysis.segment_data import build_datasets, sample_to_arrays
from fec_mm.analysis.segment_metrics import segment_scores
from fec_mm.datasets import make_demo_data
from fec_mm.models import FEC, ContextCluster

DET_CONFIG = REPO / 'configs' / 'demo' / 'fec_maskrcnn_demo.py'
SEG_CONFIG = REPO / 'configs' / 'demo' / 'fec_semfpn_demo.py'
COC_CONFIG = REPO / 'configs' / 'demo' / 'coc_maskrcnn_demo.py'
TINY = dict(depths=(1, 1, 1, 1), widths=(16, 24, 32, 40), heads=(2, 2, 2, 2), head_dim=8)


def _tool():
    spec = importlib.util.spec_from_file_location(
        'cluster_quality_tool', REPO / 'tools' / 'analysis_tools' / 'cluster_quality.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize('shape', [(120, 160), (97, 61), (30, 200)])
@pytest.mark.parametrize('k', [1, 4, 7, 16, 17, 32])
def test_grid_has_exactly_k_near_square_cells(shape, k):
    labels = grid_partition(*shape, k)
    ids, sizes = np.unique(labels, return_counts=True)
    assert ids.tolist() == list(range(k))
    # Cells are rectangles (each id fills its bounding box) of near-equal area.
    for i in ids:
        ys, xs = np.nonzero(labels == i)
        assert (ys.ptp() + 1) * (xs.ptp() + 1) == ys.size
    rows = len(np.unique(labels[:, 0]))
    per_row = [len(np.unique(labels[r])) for r in range(shape[0])]
    assert max(per_row) - min(per_row) <= 1
    expected_rows = min(max(round(math.sqrt(k * shape[0] / shape[1])), 1), k)
    assert rows == expected_rows
    assert sizes.max() <= 2.5 * sizes.min() + 2


def test_upscale_labels_is_nearest_neighbour():
    small = np.array([[0, 1], [2, 3]])
    assert np.array_equal(upscale_labels(small, (4, 6)), np.kron(small, np.ones((2, 3), int)))
    # 3 -> 5: pixel centres 0.5..4.5 map to 0.3, 0.9, 1.5, 2.1, 2.7.
    assert upscale_labels(np.array([[0, 1, 2]]), (1, 5)).tolist() == [[0, 0, 1, 2, 2]]


def test_grid_rejects_bad_k():
    with pytest.raises(ValueError, match='k must be an int >= 1'):
        grid_partition(10, 10, 0)
    with pytest.raises(ValueError, match='do not fit'):
        grid_partition(2, 2, 9)


@pytest.mark.parametrize('k', [4, 8, 16, 17, 32, 49])
def test_slic_reaches_the_wanted_count(k):
    image = (resize(data.astronaut(), (128, 160), anti_aliasing=True) * 255).astype(np.uint8)
    labels = slic_matched(image, k, 10.0)
    count = np.unique(labels).size
    # Labels are 0..count-1; SLIC's own n_segments lands ~10-30 % off here.
    assert np.unique(labels).tolist() == list(range(count))
    assert abs(count - k) <= max(1, round(0.05 * k))


def test_compactness_is_chosen_by_the_held_out_criterion():
    # Two images whose segments are colour blobs off the grid lines: low
    # compactness follows colour, very high compactness is nearly a grid.
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(2):
        gt = np.zeros((64, 80), np.int64)
        y, x = rng.integers(8, 30), rng.integers(8, 40)
        gt[y:y + 25, x:x + 30] = 1
        image = np.where(gt[..., None] == 1, [220, 30, 30], [90, 100, 95]).astype(np.uint8)
        samples.append((image, gt))
    chosen, criterion = choose_compactness(samples, (2, 4), (1.0, 1000.0))
    assert chosen == 1.0 and criterion['1.0'] > criterion['1000.0']
    expected = np.mean([(sc['asa'] + sc['br_2px']) / 2 for image, gt in samples for k in (2, 4)
                        for sc in [segment_scores(slic_matched(image, k, 1000.0), gt)]])
    assert criterion['1000.0'] == pytest.approx(expected)


def _tiny_partitioner(seed=0):
    torch.manual_seed(seed)
    backbone = FEC(arch=TINY, num_centers=(3, 3, 2, 2), folds=(2, 2, 1, 1))
    return FECPartitioner(backbone, (120., 120., 120.), (60., 60., 60.))


def test_fec_partition_is_the_final_cluster_of_each_pixel():
    part = _tiny_partitioner()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (70, 100, 3), dtype=np.uint8)  # padded to 96 x 128
    labels, feats = part(image)
    assert labels.shape == (70, 100)
    assert feats.shape == (3 * 4, 40)  # final grid 96/32 x 128/32, widths[3]
    assert labels.min() >= 0 and labels.max() < 12
    # Each 4x4 pixel block is one stem token, hence one final cluster.
    blocks = labels[:68, :100].reshape(17, 4, 25, 4)
    assert (blocks == blocks[:, :1, :, :1]).all()
    # The features are the final tokens: the backbone's last stage output.
    x = (torch.from_numpy(image).permute(2, 0, 1).float() - 120.) / 60.
    x = torch.nn.functional.pad(x[None], (0, 28, 0, 26))
    with torch.no_grad():
        out = part.backbone(x)[-1]  # normed; part._final: the pre-norm map of the call
        pre = part._final
    assert torch.allclose(part.backbone.norm3(pre), out)
    assert torch.equal(feats, pre[0].flatten(1).T)


def test_score_image_matches_counts_across_methods():
    fec = {'a': _tiny_partitioner(0), 'b': _tiny_partitioner(1)}
    image = (resize(data.coffee(), (96, 128), anti_aliasing=True) * 255).astype(np.uint8)
    gt = grid_partition(96, 128, 3)
    scores = score_image(image, gt, fec, (2, 4, 64), compactness=10.0)
    raw_counts = {m: np.unique(fec[m](image)[0]).size for m in fec}
    smallest = min(raw_counts.values())
    for key, n in (('2', 2), ('4', 4), ('64', smallest)):
        assert scores[key]['grid']['num_segments'] == n
        assert abs(scores[key]['slic']['num_segments'] - n) <= max(1, round(0.05 * n))
        for m in fec:  # a merge reaches at most n groups
            assert 1 <= scores[key][m]['num_segments'] <= n
    for m in fec:
        assert scores['raw'][m]['num_segments'] == raw_counts[m]
    assert scores['raw']['grid']['num_segments'] == raw_counts['a']


@pytest.fixture(scope='module')
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('cq_demo')
    make_demo_data(str(root), tasks=['coco', 'ade'], num_train=2, num_val=3)
    return root


def _paths(root, task):
    sub = 'coco/' if task == 'coco' else 'ade/ADEChallengeData2016'
    return [f'{split}_dataloader.dataset.data_root={str(root / sub)}'
            for split in ('train', 'test')]


def test_ground_truth_segments_of_both_layouts(demo_root):
    for config, task in ((DET_CONFIG, 'coco'), (SEG_CONFIG, 'ade')):
        cfg = Config.fromfile(str(config))
        opts = _paths(demo_root, task)
        cfg.merge_from_dict(dict(o.split('=', 1) for o in opts))
        test, _ = build_datasets(cfg)
        sample = test[0]
        image, gt = sample_to_arrays(sample, bgr=True)
        ds = sample['data_samples']
        # The image as the model sees it; the ground truth at the original size.
        assert image.dtype == np.uint8 and image.shape[:2] == tuple(ds.img_shape)
        assert gt.shape == tuple(ds.ori_shape) and gt.shape != image.shape[:2]
        if task == 'coco':
            masks = ds.gt_instances.masks.to_ndarray().astype(bool)
            assert np.unique(gt).tolist() == list(range(len(masks) + 1))
            for i, m in enumerate(masks):
                assert (gt[m] == i + 1).all()
        else:
            from skimage.measure import label
            sem = ds.gt_sem_seg.data[0].numpy().astype(np.int64)
            # One segment per 4-connected region of one class; 255 ignored.
            assert np.array_equal(gt < 0, sem == 255)
            regions = label(np.where(sem == 255, 0, sem + 1), background=0, connectivity=1)
            assert np.unique(gt[gt >= 0]).size == regions.max()
            for g in np.unique(gt[gt >= 0]):
                assert np.unique(sem[gt == g]).size == 1


def test_tool_end_to_end_on_tiny_demo(demo_root, tmp_path):
    tool = _tool()
    out = tmp_path / 'cq.json'
    opts = _paths(demo_root, 'coco')
    args = [str(DET_CONFIG), '--ks', '2', '4', '--seeds', '0', '--num-images', '3',
            '--num-heldout', '2', '--compactness', '3', '10', '--bootstrap', '50',
            '--out', str(out), '--cfg-options', *opts]
    tool.main(args)
    result = json.loads(out.read_text())
    assert {'ks', 'random_seeds', 'num_images', 'slic', 'bootstrap', 'metrics', 'results',
            'results_per_seed', 'reference', 'differences', 'per_image', 'merge', 'config',
            'command'} <= set(result)
    assert result['num_images'] == 3 and len(result['per_image']) == 3
    assert set(result['results']) == {'2', '4', 'raw'}
    assert result['slic']['compactness'] in (3.0, 10.0)
    for key, rows in result['results'].items():
        assert set(rows) == {'fec_random', 'grid', 'slic'}
        for scores in rows.values():
            for metric in result['metrics'] + ['num_segments', 'num_regions']:
                s = scores[metric]
                assert all(math.isfinite(s[v]) for v in ('mean', 'low', 'high'))
                assert s['low'] - 1e-9 <= s['mean'] <= s['high'] + 1e-9
    assert result['results']['2']['grid']['num_segments']['mean'] == 2
    # One seed: the per-seed summary is the random-init row.
    assert result['results_per_seed']['4']['fec_random_seed0'] == \
        result['results']['4']['fec_random']
    # Paired differences: reference (random init here) minus each other method,
    # the mean of the per-image differences.
    assert result['reference'] == 'fec_random'
    assert set(result['differences']) == {'2', '4', 'raw'}
    for key, rows in result['differences'].items():
        assert set(rows) == {'grid', 'slic'}
        for other, scores in rows.items():
            for metric in result['metrics']:
                expected = np.mean([img[key]['fec_random_seed0'][metric] - img[key][other][metric]
                                    for img in result['per_image']])
                assert scores[metric]['mean'] == pytest.approx(expected)
                assert scores[metric]['low'] - 1e-9 <= expected <= scores[metric]['high'] + 1e-9
    # Reruns give the same numbers (seeded init, merge, bootstrap).
    out2 = tmp_path / 'cq2.json'
    tool.main(args[:-len(opts) - 3] + ['--out', str(out2), '--cfg-options', *opts])
    again = json.loads(out2.read_text())
    assert again['results'] == result['results']


def test_tool_bad_input_writes_nothing(demo_root, tmp_path, capsys):
    tool = _tool()
    out = tmp_path / 'bad.json'
    opts = _paths(demo_root, 'coco')
    base = [str(DET_CONFIG), '--num-images', '1', '--num-heldout', '1', '--seeds', '0',
            '--out', str(out), '--cfg-options', *opts]
    with pytest.raises(SystemExit):
        tool.main(['configs/demo/missing.py', '--out', str(out)])
    assert 'config file not found' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(base[:1] + ['--checkpoint', str(tmp_path / 'none.pth')] + base[1:])
    assert 'checkpoint file not found' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        tool.main(base[:1] + ['--ks', '4', '0'] + base[1:])
    assert '--ks must all be >= 1' in capsys.readouterr().err
    # A checkpoint of another arch (FEC-Base weights for the FEC-Small config).
    other = tmp_path / 'base.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               FEC(arch='base').state_dict().items()}}, other)
    with pytest.raises(SystemExit, match='other shapes'):
        tool.main(base[:1] + ['--checkpoint', str(other)] + base[1:])
    # A config whose backbone is not FEC; a data root that does not exist.
    resnet = tmp_path / 'resnet_cfg.py'
    resnet.write_text(f"_base_ = '{DET_CONFIG}'\n"
                      "model = dict(backbone=dict(_delete_=True, type='ResNet', depth=18))\n")
    with pytest.raises(SystemExit, match="must be type='FEC'"):
        tool.main([str(resnet)] + base[1:])
    with pytest.raises(SystemExit, match='instances_val2017.json'):
        tool.main(base[:-len(opts)] + [f'{s}_dataloader.dataset.data_root={tmp_path}/none/'
                                       for s in ('train', 'test')])
    assert not out.exists() and list(tmp_path.glob('.cluster_quality.*')) == []


def test_checkpoint_backbone_loads_exactly(tmp_path):
    cfg = Config.fromfile(str(DET_CONFIG))
    trained = backbone_from_config(cfg, None, seed=5)
    ckpt = tmp_path / 'det.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in trained.state_dict().items()}
                | {'neck.x': torch.zeros(1)}}, ckpt)
    loaded = backbone_from_config(cfg, str(ckpt), seed=0)
    for k, v in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    partial = tmp_path / 'partial.pth'
    sd = {'backbone.' + k: v for k, v in list(trained.state_dict().items())[:-4]}
    torch.save({'state_dict': sd}, partial)
    with pytest.raises(ValueError, match='lacks 4 weights'):
        backbone_from_config(cfg, str(partial))


@pytest.mark.parametrize('stage', [None, 1])
def test_coc_partition_is_head0_of_a_stages_last_block(stage):
    """The label of every pixel is head 0's center in the stage's last block
    (its token's, tokens of stride 4·2^k); a center's feature is the mean of
    its members' tokens at that block's output, recomputed here."""
    torch.manual_seed(0)
    backbone = ContextCluster(TINY, num_centers=(2, 2, 2, 2), folds=(2, 2, 1, 1))
    part = CoCPartitioner(backbone, (120., 120., 120.), (60., 60., 60.), stage)
    k = 3 if stage is None else stage
    s = 4 * 2**k
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (70, 100, 3), dtype=np.uint8)
    assert backbone.size_divisor == 16  # padded to 80 x 112
    labels, feats = part(image)
    fold = backbone.folds[k]
    assert labels.shape == (70, 100) and feats.shape == ((2 * fold) ** 2, TINY['widths'][k])
    tokens = labels[::s, ::s]
    ys, xs = np.arange(70) // s, np.arange(100) // s
    assert np.array_equal(labels, tokens[ys[:, None], xs[None, :]])
    x = (torch.from_numpy(image).permute(2, 0, 1).float() - 120.) / 60.
    x = torch.nn.functional.pad(x[None], (0, 12, 0, 10))
    with torch.no_grad():  # the block's output, by running the stages by hand
        y = backbone.patch_embed(x)
        for i in range(k + 1):
            y = backbone.stages[i](backbone.downsamples[i - 1](y) if i else y)
    th, tw = tokens.shape
    out = y[0, :, :th, :tw].flatten(1).T
    flat = torch.from_numpy(tokens.reshape(-1))
    for c in np.unique(tokens):
        torch.testing.assert_close(feats[c], out[flat == c].mean(0))
    # Regions: a pixel's center lies in its own region of the center grid.
    side = 2 * fold
    region_rows = (np.arange(80) // (80 // fold))[:70]
    assert np.array_equal(labels // side // 2, np.broadcast_to(region_rows[:, None], (70, 100)))
    with pytest.raises(ValueError, match='no CoC stage 4: the backbone runs stages 0..3'):
        CoCPartitioner(backbone, (0, 0, 0), (1, 1, 1), 4)


def test_tool_on_a_coc_config_with_a_checkpoint(demo_root, tmp_path, capsys):
    """CoC rows ('coc' trained, 'coc_random'), the stage named in the JSON;
    an FEC checkpoint for the CoC config is refused naming both and the file."""
    tool = _tool()
    cfg = Config.fromfile(str(COC_CONFIG))
    ckpt = tmp_path / 'coc.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               backbone_from_config(cfg, None, seed=5).state_dict().items()}},
               ckpt)
    out = tmp_path / 'cq.json'
    opts = _paths(demo_root, 'coco')
    tool.main([str(COC_CONFIG), '--checkpoint', str(ckpt), '--ks', '2', '--seeds', '0',
               '--num-images', '2', '--num-heldout', '1', '--compactness', '10',
               '--bootstrap', '20', '--coc-stage', '2', '--out', str(out), '--cfg-options',
               *opts])
    result = json.loads(out.read_text())
    assert result['backbone'] == 'ContextCluster' and result['reference'] == 'coc'
    assert result['partition'].startswith('stage 2, last block, head 0')
    assert set(result['results']['2']) == {'coc', 'coc_random', 'grid', 'slic'}
    assert set(result['differences']['2']) == {'coc_random', 'grid', 'slic'}
    # Stage 2 of the demo's CoC-Tiny: 2x2 regions of 2x2 centers, at most 16 clusters.
    for img in result['per_image']:
        assert 1 <= img['raw']['coc']['num_segments'] <= 16
        assert img['2']['coc']['num_segments'] <= 2
    assert 'CoC (trained)' in capsys.readouterr().out
    fec = tmp_path / 'fec.pth'
    torch.save({'state_dict': {'backbone.' + k: v for k, v in
                               FEC(arch='small').state_dict().items()}}, fec)
    with pytest.raises(SystemExit, match=f'ContextCluster cannot take the checkpoint {fec}: '
                       'it holds FEC weights'):
        tool.main([str(COC_CONFIG), '--checkpoint', str(fec), '--out', str(tmp_path / 'x.json'),
                   '--cfg-options', *opts])
    with pytest.raises(SystemExit, match='coc_stage is for ContextCluster backbones only'):
        tool.main([str(DET_CONFIG), '--coc-stage', '1', '--out', str(tmp_path / 'x.json'),
                   '--cfg-options', *opts])
    assert not (tmp_path / 'x.json').exists()
