"""The views of the cluster-map tool, the sheet and the JSON report.

Shared by ``tools/visualization/vis_clusters.py`` and :class:`ClusterMapHook`:
from a :class:`~.cluster_maps.ClusterMaps` and the RGB image it was computed
on, :func:`render_views` draws each requested view and :func:`draw_cluster_sheet`
the sheet (image | stage maps | merged | contribution).
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .cluster_maps import MERGE_FEATURES, ClusterMaps, stage_stride
from .contributions import class_contributions, contribution_map
from .render import draw_sheet, group_palette, heatmap, overlay, palette, upscale
from .stats import stage_stats

MERGE_METHODS = ('kmeans', 'ward')


@dataclass
class ViewOptions:
    """What to draw.

    Attributes:
        stages: Stages (1 .. last) whose pooling maps are drawn; None: all.
        blocks: (stage, block) pairs whose mixer's per-head maps are drawn.
        heads: Heads of those blocks; None: all.
        groups: Merge the final clusters into this many groups; None: no merge.
        merge_feature: 'pooled', 'final' or 'conv_f' (:meth:`ClusterMaps.merge_features`).
        merge_method: 'kmeans' (spherical) or 'ward'.
        alpha: Opacity of the fills in [0, 1] (0: boundaries only).
        seed: Seed of the merge.
        fc: The linear head of a classifier, for the class contributions.
        target_class: Class whose contributions are drawn; None: the top one.
        class_names: Names of the classes, for the report.
        min_size: Views of smaller images are drawn enlarged (nearest
            neighbour, by an integer factor) to at least this long side, so
            that one-pixel boundaries do not cover small clusters.
    """
    stages: Optional[Sequence[int]] = None
    blocks: Sequence[Tuple[int, int]] = ()
    heads: Optional[Sequence[int]] = None
    groups: Optional[int] = None
    merge_feature: str = 'final'
    merge_method: str = 'kmeans'
    alpha: float = 0.5
    seed: int = 0
    fc: Optional[nn.Linear] = None
    target_class: Optional[int] = None
    class_names: Optional[Sequence[str]] = None
    min_size: int = 512


def display_scale(image_size: Sequence[int], min_size: int) -> int:
    """Integer enlargement of the views of an image (see ``min_size``)."""
    return max(1, -(-min_size // max(image_size)))


def check_options(options: ViewOptions, num_stages: int, depths: Sequence[int],
                  heads: Sequence[int], num_classes: Optional[int] = None) -> None:
    """Fail on a view that cannot exist, naming it and the valid range.

    Args:
        num_stages: Stages the backbone runs; depths / heads: per stage.

    Raises:
        ValueError
    """
    if not 0 <= options.alpha <= 1:
        raise ValueError(f'alpha must be in [0, 1], got {options.alpha}')
    if num_stages < 2:
        raise ValueError('the backbone runs a single stage: there is no pooling to draw')
    for k in options.stages or ():
        if not 1 <= k < num_stages:
            raise ValueError(f'no pooling stage {k}: the stages with cluster maps are '
                             f'1..{num_stages - 1} (stage 0 is the stem grid)')
    for s, j in options.blocks:
        if not 0 <= s < num_stages:
            raise ValueError(f'no stage {s} for block {s}.{j}: stages are 0..{num_stages - 1}')
        if not 0 <= j < depths[s]:
            raise ValueError(f'no block {s}.{j}: stage {s} has blocks 0..{depths[s] - 1}')
        for h in options.heads or ():
            if not 0 <= h < heads[s]:
                raise ValueError(f'no head {h} in block {s}.{j}: it has heads 0..{heads[s] - 1}')
    if options.heads and not options.blocks:
        raise ValueError('heads given without a block (--block STAGE.BLOCK)')
    if options.groups is not None and (isinstance(options.groups, bool)
                                       or not isinstance(options.groups, int)
                                       or options.groups < 1):
        raise ValueError(f'the number of groups K must be an integer >= 1, got {options.groups!r}')
    if options.merge_feature not in MERGE_FEATURES:
        raise ValueError(f'unknown merge feature {options.merge_feature!r}; valid ones are '
                         f'{MERGE_FEATURES}')
    if options.merge_method not in MERGE_METHODS:
        raise ValueError(f'unknown merge method {options.merge_method!r}; valid ones are '
                         f'{MERGE_METHODS}')
    if options.target_class is not None:
        if options.fc is None:
            raise ValueError('a target class needs a classification model (GN, global mean, '
                             'linear head)')
        if not 0 <= options.target_class < options.fc.out_features:
            raise ValueError(f'no class {options.target_class}: the head has classes '
                             f'0..{options.fc.out_features - 1}')


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def render_views(image: np.ndarray, maps: ClusterMaps, options: ViewOptions,
                 b: int = 0) -> Tuple[Dict[str, np.ndarray], dict]:
    """Draw the requested views of image ``b``.

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB, the image the maps were
            computed on (``maps.image_size``).
        maps (ClusterMaps): From :func:`~.cluster_maps.cluster_maps`.
        options (ViewOptions): What to draw.

    Returns:
        tuple: views by name (``stage{k}``, ``merged_k{K}``,
        ``block{s}.{j}_head{h}_grid``, ``block{s}.{j}_head{h}_pixels``,
        ``contribution_class{c}``), each (f·H, f·W, 3) uint8 RGB (f:
        :func:`display_scale`); and the
        report (per-stage numbers, merge, class contributions), JSON-ready.
    """
    H, W = maps.image_size
    if image.shape != (H, W, 3) or image.dtype != np.uint8:
        raise ValueError(f'render_views: image must be ({H}, {W}, 3) uint8 RGB, got '
                         f'{image.dtype} {image.shape}')
    views: Dict[str, np.ndarray] = {}
    f = display_scale(maps.image_size, options.min_size)

    big = upscale(image, f)

    def draw(labels: torch.Tensor, colors: np.ndarray) -> np.ndarray:
        return overlay(big, upscale(_np(labels), f), colors, options.alpha)

    report = dict(image_size=list(maps.image_size), padded_size=list(maps.padded_size),
                  stages=stage_stats(maps, b))
    stages = options.stages or range(1, maps.num_stages)
    for k in stages:
        rows, cols = maps.grids[k]
        views[f'stage{k}'] = draw(maps.pixel_maps[k][b], palette(rows * cols, seed=k))
    for s, j in options.blocks:
        on_grid, on_pixels = maps.head_maps(s, j)
        record = maps.encoder(s, j)
        colors = palette(record.num_centers, seed=100 + s)
        heads = options.heads if options.heads else range(on_grid.shape[1])
        for h in heads:
            grid = on_grid[b, h].repeat_interleave(stage_stride(s), 0).repeat_interleave(
                stage_stride(s), 1)[:H, :W]
            views[f'block{s}.{j}_head{h}_grid'] = draw(grid, colors)
            views[f'block{s}.{j}_head{h}_pixels'] = draw(on_pixels[b, h], colors)
    final = maps.final_map[b]
    if options.groups is not None:
        from .merge import merge_clusters
        features = maps.merge_features(options.merge_feature)[b]
        if options.groups > features.shape[0]:
            raise ValueError(f'cannot merge {features.shape[0]} final clusters into '
                             f'{options.groups} groups (K must be <= {features.shape[0]})')
        merged = merge_clusters(final, features.float(), options.groups,
                                method=options.merge_method, seed=options.seed)
        views[f'merged_k{options.groups}'] = draw(merged, group_palette(options.groups))
        sizes = torch.bincount(merged.flatten(), minlength=options.groups)
        report['merge'] = dict(groups=options.groups, feature=options.merge_feature,
                               method=options.merge_method, seed=options.seed,
                               pixels_per_group=sizes.tolist())
    if options.fc is not None:
        with torch.no_grad():
            contributions = class_contributions(maps.final, options.fc)[b:b + 1]
        logits = contributions.sum(-1)[0]
        cls = options.target_class if options.target_class is not None else int(logits.argmax())
        values = contribution_map(contributions, final[None], cls)[0]
        views[f'contribution_class{cls}'], _ = heatmap(big, upscale(_np(values), f),
                                                       options.alpha)
        names = options.class_names
        top = logits.topk(min(5, logits.numel()))
        report['classification'] = dict(
            target_class=cls, target_name=names[cls] if names else None,
            top=[dict(cls=int(c), name=names[int(c)] if names else None, logit=float(v))
                 for v, c in zip(top.values, top.indices)],
            contributions=_np(contributions[0, cls]).tolist(),
            note='contribution of final cluster i (token i of the last stage) to the target '
                 'logit; they sum to the logit (bias shared equally)')
    return views, report


def sheet_panels(image: np.ndarray, views: Dict[str, np.ndarray], report: dict
                 ) -> List[Tuple[str, np.ndarray]]:
    """(title, image) of the sheet: image | stage maps | merged | contribution."""
    stats = {s['stage']: s for s in report['stages']}
    H, W = report['image_size']
    panels = [(f'image {W}x{H}', image)]
    for name, view in views.items():
        if name.startswith('stage'):
            s = stats[int(name[len('stage'):])]
            panels.append((f"stage {s['stage']}: {s['non_empty']} clusters, "
                           f"effective {s['effective']:.0f}", view))
    for name, view in views.items():
        if name.startswith('merged'):
            m = report['merge']
            panels.append((f"merged: {m['groups']} groups ({m['method']}, {m['feature']})", view))
        elif name.startswith('contribution'):
            c = report['classification']
            label = c['target_name'] or f"class {c['target_class']}"
            panels.append((f'contribution to {label} (red +, blue -)', view))
    return panels


def draw_cluster_sheet(image: np.ndarray, views: Dict[str, np.ndarray], report: dict
                       ) -> np.ndarray:
    """The sheet as an RGB array, with the merged groups as legend and the
    per-stage numbers as note."""
    legend = []
    if 'merge' in report:
        colors = group_palette(report['merge']['groups'])
        legend = [(f'group {i}', colors[i]) for i in range(report['merge']['groups'])]
    notes = [f"stage {s['stage']}: {s['non_empty']} of {s['clusters']} clusters non-empty, "
             f"effective {s['effective']:.1f}; joins own 2x2 cell "
             f"{100 * s['own_cell_share']:.0f}%; {s['fragmentation']:.2f} pieces per "
             f"cluster; clustering branch {100 * s['cluster_branch_share']:.0f}% of the output"
             for s in report['stages']]
    if views:
        image = upscale(image, next(iter(views.values())).shape[0] // image.shape[0])
    return draw_sheet(sheet_panels(image, views, report), legend, notes)
