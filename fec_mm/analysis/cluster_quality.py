"""Are FEC's clusters good segments? Partitions of images and their scores.

For one image, FEC's partition is the final-stage cluster of every pixel
(the pooling chain of docs/notes/design.md §5, read with :func:`record_assignments`, traced
with :func:`stage_maps` / :func:`to_pixels`), merged into K groups by
:func:`merge_clusters` on the final stage's token features (the output of
the last stage's blocks, one vector per final token, before the output
norm). It is compared, at the same number of segments, with the same
architecture at random initialisation, a regular grid and scikit-image's
SLIC. :func:`evaluate_partitions` scores them all with
:mod:`fec_mm.analysis.segment_metrics`.

Context Clusters models (``type='ContextCluster'`` backbones) have no
cluster pooling, so no final partition: theirs is head 0's assignment in the
last block of one stage (default the last; ``coc_stage``), traced to pixels
(:class:`.partitions.CoCPartitioner`), merged by the mean block-output
feature of each center's members. Their rows are named ``coc`` and
``coc_random`` instead of ``fec`` and ``fec_random``.

Partitions live in :mod:`.partitions`, images and ground truth in
:mod:`.segment_data`. The ground truth is at the annotations' original size
(exact masks); every partition is made on the image the model sees (the
config's test pipeline) and scaled up to that size (nearest neighbour) to
be scored there.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

from ..visualization.merge import merge_clusters
from .partitions import (
    CoCPartitioner,
    FECPartitioner,
    backbone_from_config,
    grid_partition,
    slic_matched,
    upscale_labels,
)
from .segment_data import IGNORE, build_datasets, read_samples
from .segment_metrics import METRIC_NAMES, bootstrap_ci, segment_scores

DEFAULT_KS: Tuple[int, ...] = (4, 8, 16, 32)
DEFAULT_SEEDS: Tuple[int, ...] = (0, 1, 2)
DEFAULT_COMPACTNESS: Tuple[float, ...] = (1.0, 3.0, 10.0, 30.0)
RAW = 'raw'


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


def _relabel(labels: np.ndarray) -> np.ndarray:
    return np.unique(labels, return_inverse=True)[1].reshape(labels.shape).astype(np.int64)


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
                        seed: int = 0, coc_stage: Optional[int] = None) -> dict:
    """Score FEC's (or a Context Clusters model's) partitions and the
    baselines on a config's test images.

    Args:
        cfg (Config): An mmdet or mmseg config with an FEC or ContextCluster
            backbone.
        checkpoint (str, optional): Trained weights ('fec' rows); without,
            only the random initialisations are scored.
        ks: Target numbers of segments (ints >= 1).
        seeds: Seeds of the randomly initialised backbones.
        num_images: Scored images (the first of the test split; all if None).
        num_heldout: Train-split images on which SLIC's compactness is chosen.
        compactness: SLIC compactness candidates.
        merge_method: :func:`merge_clusters` method.
        bootstrap: Bootstrap resamples; ``seed`` seeds them.
        coc_stage: ContextCluster only: the stage whose last block's head-0
            assignment is the partition (default the last stage).

    Returns:
        dict: settings, ``results`` (see :func:`summarise`; random init as
        the per-image mean over seeds), ``results_per_seed``, ``reference``
        and ``differences`` (see :func:`paired_differences`) and
        ``per_image``.
    """
    ks = check_ks(ks)
    if not seeds:
        raise ValueError('cluster quality: at least one random-init seed is needed')
    logger = MMLogger.get_current_instance()
    prep = cfg.model.get('data_preprocessor') or {}
    mean = prep.get('mean', (123.675, 116.28, 103.53))
    std = prep.get('std', (58.395, 57.12, 57.375))
    bgr = bool(prep.get('bgr_to_rgb', prep.get('to_rgb', True)))
    coc = cfg.model.get('backbone', {}).get('type') == 'ContextCluster'
    if coc_stage is not None and not coc:
        raise ValueError('cluster quality: coc_stage is for ContextCluster backbones only')
    name = 'coc' if coc else 'fec'

    def partitioner(backbone):
        if coc:
            return CoCPartitioner(backbone, mean, std, coc_stage)
        return FECPartitioner(backbone, mean, std)

    fec: Dict[str, FECPartitioner] = {}
    if checkpoint is not None:
        fec[name] = partitioner(backbone_from_config(cfg, checkpoint))
    for s in seeds:
        fec[f'{name}_random_seed{s}'] = partitioner(backbone_from_config(cfg, None, s))
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
                                     reference=name if checkpoint else None))
        if (i + 1) % 10 == 0:
            logger.info(f'cluster quality: {i + 1}/{len(samples)} images')
    groups: Dict[str, List[str]] = {}
    if checkpoint is not None:
        groups[name] = [name]
    groups[f'{name}_random'] = [f'{name}_random_seed{s}' for s in seeds]
    groups['grid'] = ['grid']
    groups['slic'] = ['slic']
    return dict(
        checkpoint=checkpoint, ks=list(ks), random_seeds=list(seeds),
        num_images=len(samples),
        image_sizes=sorted({tuple(int(v) for v in im.shape[:2]) for im, _ in samples}),
        gt_sizes=sorted({tuple(int(v) for v in gt.shape) for _, gt in samples}),
        backbone='ContextCluster' if coc else 'FEC',
        partition=(f'stage {next(iter(fec.values())).stage}, last block, head 0: '
                   'assignments traced to pixels' if coc
                   else 'final-stage clusters traced to pixels'),
        merge=dict(method=merge_method, feature=(
            'mean block-output feature of each center\'s members' if coc else
            'final-stage token features (output of the last stage, before the output norm)')),
        slic=dict(compactness=chosen, candidates=list(compactness), criterion=criterion,
                  heldout_images=len(heldout)),
        bootstrap=dict(samples=bootstrap, seed=seed, level=0.95),
        metrics=list(METRIC_NAMES),
        results=summarise(per_image, groups, bootstrap, seed),
        # Each random-init seed on its own: the spread between initialisations.
        results_per_seed=summarise(per_image, {f'{name}_random_seed{s}':
                                               [f'{name}_random_seed{s}'] for s in seeds},
                                   bootstrap, seed),
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
                'coc': 'CoC (trained)', 'coc_random': 'CoC (random init, mean of seeds)',
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
