"""The views of the cluster-map tool, the sheet and the JSON report.

Shared by ``tools/visualization/vis_clusters.py`` and :class:`ClusterMapHook`:
from a :class:`~.cluster_maps.ClusterMaps` and the RGB image it was computed
on, :func:`render_views` draws each requested view and :func:`draw_cluster_sheet`
the sheet (image | stage maps | merged | contribution).
"""
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from .cluster_maps import MERGE_FEATURES, ClusterMaps, stage_stride
from .contributions import class_contributions, contribution_map
from .merge import MERGE_METHODS, merge_clusters
from .render import draw_sheet, group_palette, heatmap, overlay, palette, upscale
from .stats import count_components, stage_stats


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


@dataclass
class Layer:
    """What one view shows, at image resolution (H, W).

    Attributes:
        title: Title of the view in the sheet.
        labels: (H, W) int ids (cluster maps) or None.
        colors: (num_ids, 3) uint8 colours of the ids.
        values: (H, W) float signed values (class contributions) or None.
        in_sheet: Whether the sheet shows it.
    """
    title: str
    labels: Optional[np.ndarray] = None
    colors: Optional[np.ndarray] = None
    values: Optional[np.ndarray] = None
    in_sheet: bool = False


def view_layers(maps: ClusterMaps, options: ViewOptions, b: int = 0
                ) -> Tuple[Dict[str, Layer], dict]:
    """The requested views of image ``b`` and the report.

    Returns:
        tuple: layers by view name (``stage{k}``, ``merged_k{K}``,
        ``block{s}.{j}_head{h}_grid``, ``block{s}.{j}_head{h}_pixels``,
        ``contribution_class{c}``); and the report (per-stage numbers,
        merge, class contributions), JSON-ready.
    """
    H, W = maps.image_size
    layers: Dict[str, Layer] = {}
    stats = stage_stats(maps, b)
    report = dict(image_size=list(maps.image_size), padded_size=list(maps.padded_size),
                  stages=stats)
    for k in options.stages or range(1, maps.num_stages):
        rows, cols = maps.grids[k]
        s = stats[k - 1]
        layers[f'stage{k}'] = Layer(
            f"stage {k}: {s['non_empty']} clusters, effective {s['effective']:.0f}",
            _np(maps.pixel_maps[k][b]), palette(rows * cols, seed=k), in_sheet=True)
    for s, j in options.blocks:
        on_grid, on_pixels = maps.head_maps(s, j)
        colors = palette(maps.encoder(s, j).num_centers, seed=100 + s)
        stride = stage_stride(s)
        for h in options.heads if options.heads else range(on_grid.shape[1]):
            grid = on_grid[b, h].repeat_interleave(stride, 0).repeat_interleave(stride, 1)
            layers[f'block{s}.{j}_head{h}_grid'] = Layer(
                f'block {s}.{j} head {h}, stage grid', _np(grid[:H, :W]), colors)
            layers[f'block{s}.{j}_head{h}_pixels'] = Layer(
                f'block {s}.{j} head {h}, traced', _np(on_pixels[b, h]), colors)
    final = maps.final_map[b]
    if options.groups is not None:
        features = maps.merge_features(options.merge_feature)[b]
        merged = merge_clusters(final, features.float(), options.groups,
                                method=options.merge_method, seed=options.seed)
        layers[f'merged_k{options.groups}'] = Layer(
            f'final clusters merged: {options.groups} groups ({options.merge_method}, '
            f'{options.merge_feature})', _np(merged), group_palette(options.groups),
            in_sheet=True)
        sizes = torch.bincount(merged.flatten(), minlength=options.groups)
        report['merge'] = dict(groups=options.groups, feature=options.merge_feature,
                               method=options.merge_method, seed=options.seed,
                               pixels_per_group=sizes.tolist())
    if options.fc is not None:
        with torch.no_grad():
            contributions = class_contributions(maps.final, options.fc)[b:b + 1]
        logits = contributions.sum(-1)[0]
        cls = options.target_class if options.target_class is not None else int(logits.argmax())
        names = options.class_names
        label = names[cls] if names else f'class {cls}'
        layers[f'contribution_class{cls}'] = Layer(
            f'contribution to {label} (red +, blue -)',
            values=_np(contribution_map(contributions, final[None], cls)[0]), in_sheet=True)
        top = logits.topk(min(5, logits.numel()))
        report['classification'] = dict(
            target_class=cls, target_name=names[cls] if names else None,
            top=[dict(cls=int(c), name=names[int(c)] if names else None, logit=float(v))
                 for v, c in zip(top.values, top.indices)],
            contributions=_np(contributions[0, cls]).tolist(),
            note='contribution of final cluster i (token i of the last stage) to the target '
                 'logit; they sum to the logit (bias shared equally)')
    return layers, report


def draw_layer(image: np.ndarray, layer: Layer, alpha: float, boundaries: bool = True
               ) -> np.ndarray:
    """One layer over ``image`` (same size as the layer)."""
    if layer.values is not None:
        return heatmap(image, layer.values, alpha)[0]
    return overlay(image, layer.labels, layer.colors, alpha, boundaries)


def render_views(image: np.ndarray, maps: ClusterMaps, options: ViewOptions, b: int = 0
                 ) -> Tuple[Dict[str, np.ndarray], dict, Dict[str, Layer]]:
    """Draw the requested views of image ``b``.

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB, the image the maps were
            computed on (``maps.image_size``).
        maps (ClusterMaps): From :func:`~.cluster_maps.cluster_maps`.
        options (ViewOptions): What to draw.

    Returns:
        tuple: the views by name (see :func:`view_layers`), each
        (f·H, f·W, 3) uint8 RGB (f: :func:`display_scale`); the report; the
        layers (for :func:`draw_cluster_sheet`).
    """
    H, W = maps.image_size
    if image.shape != (H, W, 3) or image.dtype != np.uint8:
        raise ValueError(f'render_views: image must be ({H}, {W}, 3) uint8 RGB, got '
                         f'{image.dtype} {image.shape}')
    layers, report = view_layers(maps, options, b)
    f = display_scale(maps.image_size, options.min_size)
    big = upscale(image, f)
    views = {}
    for name, layer in layers.items():
        scaled = Layer(layer.title, None if layer.labels is None else upscale(layer.labels, f),
                       layer.colors, None if layer.values is None else upscale(layer.values, f))
        views[name] = draw_layer(big, scaled, options.alpha)
    return views, report, layers


def _resize_nearest(x: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    rows = (np.arange(size[0]) * x.shape[0] // size[0])
    cols = (np.arange(size[1]) * x.shape[1] // size[1])
    return x[rows][:, cols]


def draw_cluster_sheet(image: np.ndarray, layers: Dict[str, Layer], report: dict,
                       alpha: float = 0.5, panel_px: int = 400) -> np.ndarray:
    """The sheet (image | stage maps | merged | contribution) as an RGB array,
    with the merged groups as legend and the per-stage numbers as notes.

    Panels are drawn at their own size (the long side ``panel_px``): labels
    resized by nearest neighbour, the photograph with anti-aliasing. Where
    connected pieces of clusters are smaller than 8×8 panel pixels on
    average, the panel shows
    the fills without boundaries, which would cover them.
    """
    from PIL import Image
    H, W = image.shape[:2]
    scale = panel_px / max(H, W)
    size = (max(1, round(H * scale)), max(1, round(W * scale)))
    # PIL's bilinear filter widens its support when shrinking (anti-aliased).
    small = image if size == (H, W) else np.asarray(
        Image.fromarray(image).resize(size[::-1], Image.BILINEAR))
    panels = [(f'image {W}x{H}', small)]
    for layer in layers.values():
        if not layer.in_sheet:
            continue
        if layer.labels is not None:
            labels = _resize_nearest(layer.labels, size)
            lines = labels.size / count_components(labels) >= 64
            panels.append((layer.title + ('' if lines else '\n(fills only: pieces too small '
                                          'for lines)'),
                           overlay(small, labels, layer.colors, alpha, boundaries=lines)))
        else:
            panels.append((layer.title, heatmap(small, _resize_nearest(layer.values, size),
                                                alpha)[0]))
    legend = []
    if 'merge' in report:
        colors = group_palette(report['merge']['groups'])
        legend = [(f'group {i}', colors[i]) for i in range(report['merge']['groups'])]
    notes = [f"stage {s['stage']}: {s['non_empty']} of {s['clusters']} clusters non-empty, "
             f"effective {s['effective']:.1f}; joins own 2x2 cell "
             f"{100 * s['own_cell_share']:.0f}%; {s['fragmentation']:.2f} pieces per "
             f"cluster; clustering branch {100 * s['cluster_branch_share']:.0f}% of the output"
             for s in report['stages']]
    return draw_sheet(panels, legend, notes, panel_inches=size[1] / 100)
