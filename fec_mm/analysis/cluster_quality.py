"""Are FEC's clusters good segments? Partitions of images and their scores.

For one image, FEC's partition is the final-stage cluster of every pixel
(the pooling chain of spec §5, read with :func:`record_assignments`, traced
with :func:`stage_maps` / :func:`to_pixels`), merged into K groups by
:func:`merge_clusters` on the final stage's token features (the output of
the last stage's blocks, one vector per final token, before the output
norm). It is compared, at the same number of segments, with the same
architecture at random initialisation, a regular grid and scikit-image's
SLIC. :func:`evaluate_partitions` scores them all with
:mod:`fec_mm.analysis.segment_metrics`.

Ground truth: an mmdet dataset gives one segment per instance mask plus the
background (ignored instances carry the ignore label); an mmseg dataset one
segment per 4-connected region of one class (the ignore index stays
ignored). The test pipelines of mmdet and mmseg resize the image but load
the annotations at the original size, so the masks stay exact: every
partition is made on the image the model sees (the config's test
pipeline) and scaled up to the original size (nearest neighbour) to be
scored there.
"""
import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import Config
from mmengine.logging import MMLogger

from ..models.assignments import record_assignments
from ..models.checkpoint import backbone_state_dict, check_weights_fit, read_state_dict
from ..visualization.merge import merge_clusters
from ..visualization.trace import stage_maps, to_pixels
from .segment_metrics import METRIC_NAMES, bootstrap_ci, segment_scores

IGNORE = -1
DEFAULT_KS: Tuple[int, ...] = (4, 8, 16, 32)
DEFAULT_SEEDS: Tuple[int, ...] = (0, 1, 2)
DEFAULT_COMPACTNESS: Tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)
RAW = 'raw'


# ----------------------------------------------------------------------------
# Partitions
# ----------------------------------------------------------------------------
def grid_partition(height: int, width: int, k: int) -> np.ndarray:
    """A regular grid of exactly ``k`` cells, as square as possible.

    Rows ``r ≈ sqrt(k·H/W)`` bands of equal height; the ``k`` cells are
    spread over the bands as evenly as possible (``k // r`` or ``k // r + 1``
    per band), each band cut into equal widths. So ``k`` need not factor.

    Returns:
        np.ndarray: (height, width) int64 labels 0 .. k-1, row-major.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f'grid_partition: k must be an int >= 1, got {k!r}')
    rows = int(min(max(round(math.sqrt(k * height / width)), 1), k, height))
    per_row = np.full(rows, k // rows)
    per_row[:k % rows] += 1
    if per_row.max() > width:
        raise ValueError(f'grid_partition: {k} cells do not fit a {height}x{width} image')
    row_of = (np.arange(height) * rows) // height
    first = np.concatenate([[0], np.cumsum(per_row)[:-1]])
    cols = per_row[row_of][:, None]
    col_of = (np.arange(width)[None, :] * cols) // width
    return (first[row_of][:, None] + col_of).astype(np.int64)


def slic_matched(image: np.ndarray, k: int, compactness: float,
                 max_tries: int = 12) -> np.ndarray:
    """SLIC superpixels whose actual count is as close to ``k`` as found.

    SLIC's ``n_segments`` is only a target (connectivity enforcement merges
    and splits), so it is searched: rescaled by ``k / count`` until the count
    is ``k`` or ``max_tries`` runs; the run closest to ``k`` is returned.

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        k (int): Wanted number of segments.
        compactness (float): SLIC's compactness.

    Returns:
        np.ndarray: (H, W) int64 labels from 0.
    """
    from skimage.segmentation import slic
    best, best_gap, tried = None, None, set()
    n = k
    for _ in range(max_tries):
        tried.add(n)
        labels = slic(image, n_segments=n, compactness=compactness, start_label=0,
                      channel_axis=-1)
        count = int(np.unique(labels).size)
        gap = abs(count - k)
        if best_gap is None or gap < best_gap:
            best, best_gap = labels, gap
        if gap == 0:
            break
        step = max(1, round(n * k / count)) if count else n + 1
        if step in tried:  # the rescale cycles: walk one step towards k instead
            step = n + (1 if count < k else -1)
            while step in tried and step > 1:
                step += 1 if count < k else -1
        if step < 1 or step in tried:
            break
        n = step
    return best.astype(np.int64)


def _relabel(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


class FECPartitioner:
    """Final-stage cluster maps of one FEC backbone, traced to pixels.

    Args:
        backbone (nn.Module): An FEC backbone (``size_divisor``, ``stages``).
        mean, std (Sequence[float]): Per-channel normalisation of RGB pixels,
            as the config's data preprocessor.
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float],
                 std: Sequence[float]) -> None:
        self.backbone = backbone.eval()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._final: Optional[torch.Tensor] = None

    def _keep_final(self, module, args, out) -> None:
        self._final = out.detach()

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, torch.Tensor]:
        """Partition one image.

        Args:
            image (np.ndarray): (H, W, 3) uint8 RGB.

        Returns:
            tuple: (H, W) int64 final-cluster id of every pixel (flat ids on
            the final stage's grid) and the (num_final_tokens, C) features
            of those tokens.
        """
        h, w = image.shape[:2]
        x = (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
             - self.mean) / self.std
        d = self.backbone.size_divisor
        # Zero after normalisation, bottom/right: what mmdet/mmseg pad with.
        x = F.pad(x[None], (0, -w % d, 0, -h % d))
        # The blocks are called one by one (not the stage's Sequential), so
        # the last block's output is the final stage's map.
        handle = self.backbone.stages[-1][-1].register_forward_hook(self._keep_final)
        try:
            with record_assignments(self.backbone) as rec:
                self.backbone(x)
        finally:
            handle.remove()
        stem = stage_maps(rec.poolings())[-1]
        stride = x.shape[-1] // stem.shape[-1]
        pixels = to_pixels(stem, stride)[0, :h, :w]
        feats = self._final[0].flatten(1).T.contiguous()
        return pixels.numpy().astype(np.int64), feats


def backbone_from_config(cfg: Config, checkpoint: Optional[str] = None,
                         seed: int = 0) -> nn.Module:
    """The config's FEC backbone, with the checkpoint's backbone weights or,
    without one, randomly initialised from ``seed`` (the default init).

    Raises:
        ValueError: The config's backbone is not FEC, or the checkpoint holds
            no backbone weights, weights of another arch, or misses some.
    """
    from mmengine.registry import MODELS

    import fec_mm.models  # noqa: F401  (registers FEC)
    bcfg = copy.deepcopy(cfg.model.get('backbone'))
    if bcfg is None or bcfg.get('type') != 'FEC':
        raise ValueError('cluster quality: the config\'s model.backbone must be '
                         f"type='FEC', got {None if bcfg is None else bcfg.get('type')!r}")
    bcfg['init_cfg'] = None
    torch.manual_seed(seed)
    backbone = MODELS.build(bcfg)
    if checkpoint is None:  # construction applies the default init (spec §2)
        return backbone.eval()
    state_dict = read_state_dict(checkpoint)
    prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else ''
    check_weights_fit(backbone, state_dict, prefix)
    weights = backbone_state_dict(state_dict, prefix or None)
    missing = [k for k in backbone.state_dict() if k not in weights]
    if missing:
        raise ValueError(f'cluster quality: checkpoint {checkpoint} lacks {len(missing)} '
                         f'weights of the config\'s FEC backbone, e.g. {missing[:3]}: a '
                         'checkpoint of another model or arch?')
    backbone.load_state_dict(weights, strict=False)
    return backbone.eval()


# ----------------------------------------------------------------------------
# Data: images and ground-truth segments from an mmdet / mmseg config
# ----------------------------------------------------------------------------
def _dataset_cfg(cfg: Config, split: str) -> dict:
    loader = cfg.get(f'{split}_dataloader')
    if loader is None:
        raise ValueError(f'cluster quality: the config has no {split}_dataloader')
    ds = copy.deepcopy(loader['dataset'])
    while 'pipeline' not in ds and 'dataset' in ds:  # dataset wrappers
        ds = ds['dataset']
    return ds


def build_datasets(cfg: Config) -> Tuple[object, object]:
    """The (scored, held-out) datasets: the config's test dataset, and its
    train dataset read with the test pipeline (held out: SLIC's compactness
    is chosen there, never on the scored images)."""
    from mmengine.registry import DATASETS, init_default_scope
    scope = cfg.get('default_scope')
    if scope not in ('mmdet', 'mmseg'):
        raise ValueError(f'cluster quality reads mmdet or mmseg configs, this one has '
                         f'default_scope={scope!r}')
    init_default_scope(scope)
    import importlib
    importlib.import_module(f'{scope}.datasets')
    test = _dataset_cfg(cfg, 'test')
    train = _dataset_cfg(cfg, 'train')
    train['pipeline'] = copy.deepcopy(test['pipeline'])
    train['test_mode'] = True
    return DATASETS.build(test), DATASETS.build(train)


def sample_to_arrays(sample: dict, bgr: bool,
                     ignore_index: int = 255) -> Tuple[np.ndarray, np.ndarray]:
    """(h, w, 3) uint8 RGB image as the pipeline resized it and (H, W)
    int64 ground-truth segments at the annotations' size (:data:`IGNORE`
    where ignored) of one packed mmdet/mmseg sample (``ignore_index``: the
    ignored label of a semantic map)."""
    image = sample['inputs'].permute(1, 2, 0).numpy()
    if bgr:
        image = image[..., ::-1]
    image = np.ascontiguousarray(image).astype(np.uint8)
    ds = sample['data_samples']
    if 'gt_sem_seg' in ds:
        from skimage.measure import label
        sem = ds.gt_sem_seg.data[0].numpy().astype(np.int64)
        ignore = int(ignore_index)
        regions = label(np.where(sem == ignore, -1, sem), background=-1, connectivity=1)
        gt = np.where(sem == ignore, IGNORE, regions.astype(np.int64))
    elif 'gt_instances' in ds:
        masks = ds.gt_instances.get('masks')
        if masks is None:
            raise ValueError('cluster quality: the test pipeline gives no instance masks '
                             '(LoadAnnotations with_mask=True is needed)')
        gt = np.zeros((masks.height, masks.width), np.int64)
        for i, m in enumerate(masks.to_ndarray()):
            gt[m.astype(bool)] = i + 1
        ignored = ds.get('ignored_instances')
        if ignored is not None and ignored.get('masks') is not None:
            for m in ignored.masks.to_ndarray():
                gt[m.astype(bool)] = IGNORE
    else:
        raise ValueError('cluster quality: a sample holds neither gt_sem_seg nor '
                         'gt_instances; the test pipeline must load the annotations')
    return image, gt


def read_samples(dataset, num: Optional[int], bgr: bool) -> List[Tuple[np.ndarray, np.ndarray]]:
    """The first ``num`` (all if None) samples of a dataset as arrays."""
    total = len(dataset)
    n = total if num is None else min(num, total)
    ignore = getattr(dataset, 'ignore_index', 255)
    return [sample_to_arrays(dataset[i], bgr, ignore) for i in range(n)]


# ----------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------
def choose_compactness(samples: Sequence[Tuple[np.ndarray, np.ndarray]], ks: Sequence[int],
                       candidates: Sequence[float]) -> Tuple[float, Dict[str, float]]:
    """The SLIC compactness with the best mean of ASA and boundary recall at
    2 px over ``ks`` and the (held-out) samples.

    Returns:
        tuple: the chosen value and the criterion of every candidate.
    """
    if not samples:
        raise ValueError('cluster quality: no held-out image to choose SLIC\'s compactness')
    scores = {}
    for c in candidates:
        vals = []
        for image, gt in samples:
            for k in ks:
                s = _scores(slic_matched(image, k, c), gt)
                vals.append((s['asa'] + s['br_2px']) / 2)
        scores[str(c)] = float(np.mean(vals))
    best = max(candidates, key=lambda c: scores[str(c)])
    return float(best), scores


def upscale_labels(labels: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``shape`` (pixel centres)."""
    h, w = labels.shape
    H, W = shape
    if (h, w) == (H, W):
        return labels
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def _scores(pred: np.ndarray, gt: np.ndarray) -> Dict[str, float]:
    return segment_scores(upscale_labels(pred, gt.shape), gt, IGNORE)


def score_image(image: np.ndarray, gt: np.ndarray, fec: Dict[str, FECPartitioner],
                ks: Sequence[int], compactness: float, merge_method: str = 'kmeans',
                merge_seed: int = 0, reference: Optional[str] = None
                ) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Every partition of one image, scored (made at the image's size,
    scored at the ground truth's: see the module doc).

    At a target K every method gets ``n = min(K, R)`` segments, R the
    smallest raw final-cluster count among the FEC models on this image (a
    merge cannot make more groups than there are clusters). At ``'raw'``
    each FEC model keeps all its clusters and the grid and SLIC get the
    count of the ``reference`` model (default: the first).

    Returns:
        dict: ``{K or 'raw': {method: scores}}`` (see :func:`segment_scores`;
        ``num_segments`` is the count actually reached).
    """
    raw = {name: part(image) for name, part in fec.items()}
    counts = {name: int(np.unique(labels).size) for name, (labels, _) in raw.items()}
    smallest = min(counts.values())
    out: Dict[str, Dict[str, Dict[str, float]]] = {}
    for k in ks:
        n = min(k, smallest)
        row = {}
        for name, (labels, feats) in raw.items():
            merged = merge_clusters(torch.from_numpy(labels), feats, n, method=merge_method,
                                    seed=merge_seed)
            row[name] = _scores(merged.numpy(), gt)
        row['grid'] = _scores(grid_partition(*image.shape[:2], n), gt)
        row['slic'] = _scores(slic_matched(image, n, compactness), gt)
        out[str(k)] = row
    ref = reference if reference is not None else next(iter(raw))
    row = {name: _scores(_relabel(labels), gt) for name, (labels, _) in raw.items()}
    row['grid'] = _scores(grid_partition(*image.shape[:2], counts[ref]), gt)
    row['slic'] = _scores(slic_matched(image, counts[ref], compactness), gt)
    out[RAW] = row
    return out


def summarise(per_image: Sequence[Dict[str, Dict[str, Dict[str, float]]]],
              groups: Dict[str, Sequence[str]], num_samples: int = 1000,
              seed: int = 0) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """Mean and bootstrap 95 % interval over images of every score.

    Args:
        per_image: :func:`score_image` results.
        groups: Reported method -> the scored methods averaged per image
            first (e.g. ``'fec_random': ['fec_random_seed0', ...]``).

    Returns:
        dict: ``{K: {method: {metric: {'mean', 'low', 'high'}}}}``, metrics
        :data:`METRIC_NAMES`, ``num_segments`` and ``num_regions``.
    """
    out: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for key in per_image[0]:
        out[key] = {}
        for method, members in groups.items():
            out[key][method] = {}
            for metric in METRIC_NAMES + ('num_segments', 'num_regions'):
                vals = [np.mean([img[key][m][metric] for m in members]) for img in per_image]
                mean, low, high = bootstrap_ci(vals, num_samples, seed)
                out[key][method][metric] = dict(mean=mean, low=low, high=high)
    return out


def paired_differences(per_image: Sequence[Dict[str, Dict[str, Dict[str, float]]]],
                       groups: Dict[str, Sequence[str]], reference: str,
                       num_samples: int = 1000, seed: int = 0
                       ) -> Dict[str, Dict[str, Dict[str, dict]]]:
    """Per-image differences ``reference - other`` of every metric, mean and
    bootstrap 95 % interval: the paired comparison (same images), tighter
    than comparing two separate intervals.

    Returns:
        dict: ``{K: {other: {metric: {'mean', 'low', 'high'}}}}``.
    """
    def per_image_mean(img, key, method, metric):
        return float(np.mean([img[key][m][metric] for m in groups[method]]))

    out: Dict[str, Dict[str, Dict[str, dict]]] = {}
    for key in per_image[0]:
        out[key] = {}
        for other in groups:
            if other == reference:
                continue
            out[key][other] = {}
            for metric in METRIC_NAMES:
                diffs = [per_image_mean(img, key, reference, metric)
                         - per_image_mean(img, key, other, metric) for img in per_image]
                mean, low, high = bootstrap_ci(diffs, num_samples, seed)
                out[key][other][metric] = dict(mean=mean, low=low, high=high)
    return out


def evaluate_partitions(cfg: Config, checkpoint: Optional[str] = None,
                        ks: Sequence[int] = DEFAULT_KS,
                        seeds: Sequence[int] = DEFAULT_SEEDS,
                        num_images: Optional[int] = None, num_heldout: int = 8,
                        compactness: Sequence[float] = DEFAULT_COMPACTNESS,
                        merge_method: str = 'kmeans', bootstrap: int = 1000,
                        seed: int = 0) -> dict:
    """Score FEC's partitions and the baselines on a config's test images.

    Args:
        cfg (Config): An mmdet or mmseg config with an FEC backbone.
        checkpoint (str, optional): Trained weights ('fec' rows); without,
            only the random initialisations are scored.
        ks: Target numbers of segments (ints >= 1).
        seeds: Seeds of the randomly initialised backbones.
        num_images: Scored images (the first of the test split; all if None).
        num_heldout: Train-split images on which SLIC's compactness is chosen.
        compactness: SLIC compactness candidates.
        merge_method: :func:`merge_clusters` method.
        bootstrap: Bootstrap resamples; ``seed`` seeds them.

    Returns:
        dict: settings, ``results`` (see :func:`summarise`) and ``per_image``.
    """
    ks = check_ks(ks)
    if not seeds:
        raise ValueError('cluster quality: at least one random-init seed is needed')
    logger = MMLogger.get_current_instance()
    prep = cfg.model.get('data_preprocessor') or {}
    mean = prep.get('mean', (123.675, 116.28, 103.53))
    std = prep.get('std', (58.395, 57.12, 57.375))
    bgr = bool(prep.get('bgr_to_rgb', prep.get('to_rgb', True)))
    fec: Dict[str, FECPartitioner] = {}
    if checkpoint is not None:
        fec['fec'] = FECPartitioner(backbone_from_config(cfg, checkpoint), mean, std)
    for s in seeds:
        fec[f'fec_random_seed{s}'] = FECPartitioner(backbone_from_config(cfg, None, s), mean, std)
    test_set, heldout_set = build_datasets(cfg)
    samples = read_samples(test_set, num_images, bgr)
    if not samples:
        raise ValueError('cluster quality: the test split holds no image')
    heldout = read_samples(heldout_set, num_heldout, bgr)
    chosen, criterion = choose_compactness(heldout, ks, compactness)
    logger.info(f'cluster quality: SLIC compactness {chosen} (held-out criterion {criterion})')
    per_image = []
    for i, (image, gt) in enumerate(samples):
        per_image.append(score_image(image, gt, fec, ks, chosen, merge_method,
                                     reference='fec' if checkpoint else None))
        if (i + 1) % 10 == 0:
            logger.info(f'cluster quality: {i + 1}/{len(samples)} images')
    groups: Dict[str, List[str]] = {}
    if checkpoint is not None:
        groups['fec'] = ['fec']
    groups['fec_random'] = [f'fec_random_seed{s}' for s in seeds]
    groups['grid'] = ['grid']
    groups['slic'] = ['slic']
    return dict(
        checkpoint=checkpoint, ks=list(ks), random_seeds=list(seeds),
        num_images=len(samples),
        image_sizes=sorted({tuple(int(v) for v in im.shape[:2]) for im, _ in samples}),
        gt_sizes=sorted({tuple(int(v) for v in gt.shape) for _, gt in samples}),
        merge=dict(method=merge_method, feature='final-stage token features (output of '
                   'the last stage, before the output norm)'),
        slic=dict(compactness=chosen, candidates=list(compactness), criterion=criterion,
                  heldout_images=len(heldout)),
        bootstrap=dict(samples=bootstrap, seed=seed, level=0.95),
        metrics=list(METRIC_NAMES),
        results=summarise(per_image, groups, bootstrap, seed),
        reference=next(iter(groups)),
        differences=paired_differences(per_image, groups, next(iter(groups)), bootstrap, seed),
        per_image=per_image)


def check_ks(ks: Sequence[int]) -> Tuple[int, ...]:
    """Validated target numbers of segments."""
    ks = tuple(ks)
    if not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f'cluster quality: K values must be ints >= 1, got {list(ks)}')
    return ks


METHOD_NAMES = {'fec': 'FEC (trained)', 'fec_random': 'FEC (random init, mean of seeds)',
                'grid': 'grid', 'slic': 'SLIC'}
METRIC_TITLES = {'asa': 'ASA ↑', 'ue': 'UE ↓', 'br_2px': 'BR@2px ↑',
                 'br_diag': 'BR@0.25%diag ↑', 'bp_2px': 'BP@2px ↑', 'mbo': 'MBO ↑'}


def markdown_table(result: dict) -> str:
    """The results as markdown tables: mean [95 % interval] per cell, then
    the paired differences of the reference FEC row against the others."""
    head = ['K', 'partition', 'segments (4-conn. pieces)']
    head += [METRIC_TITLES[m] for m in METRIC_NAMES]
    lines = ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for key, rows in result['results'].items():
        for method, scores in rows.items():
            cells = [key, METHOD_NAMES.get(method, method),
                     f"{scores['num_segments']['mean']:.1f} "
                     f"({scores['num_regions']['mean']:.1f})"]
            for m in METRIC_NAMES:
                s = scores[m]
                cells.append(f"{s['mean']:.3f} [{s['low']:.3f}, {s['high']:.3f}]")
            lines.append('| ' + ' | '.join(cells) + ' |')
    if 'differences' not in result:
        return '\n'.join(lines)
    ref = METHOD_NAMES.get(result['reference'], result['reference'])
    lines += ['', f'Paired per-image differences, {ref} minus each other partition '
              '(mean [95 % interval]; an interval off zero is a real difference):', '']
    head = ['K', f'{ref} minus'] + [METRIC_TITLES[m] for m in METRIC_NAMES]
    lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
    for key, rows in result['differences'].items():
        for method, scores in rows.items():
            cells = [key, METHOD_NAMES.get(method, method)]
            for m in METRIC_NAMES:
                s = scores[m]
                cells.append(f"{s['mean']:+.3f} [{s['low']:+.3f}, {s['high']:+.3f}]")
            lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)
