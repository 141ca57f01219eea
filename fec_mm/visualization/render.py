"""Drawing cluster maps: RGB uint8 arrays in, RGB uint8 arrays out.

Every view is the photograph with each cluster filled in its colour at
opacity ``alpha`` and the cluster boundaries drawn by skimage's
``mark_boundaries``; the sheet lays several views side by side with titles
and a legend (matplotlib's Agg canvas, no pyplot state). Arrays are RGB
throughout (OpenCV's BGR is converted where images are loaded), so nothing
is written with red and blue swapped.
"""
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

BOUNDARY_COLOR = (1.0, 1.0, 0.0)


def palette(num: int, seed: int = 0) -> np.ndarray:
    """(num, 3) uint8 colours, the same for the same ``num`` and ``seed``.

    Random bright colours: neighbouring cluster ids (neighbouring cells of
    the grid) get unrelated colours, so adjacent clusters stand apart.
    """
    rng = np.random.default_rng(seed)
    return rng.integers(40, 256, size=(max(num, 1), 3), dtype=np.uint8)


def group_palette(num: int) -> np.ndarray:
    """(num, 3) uint8 distinct colours for a few merged groups (tab20)."""
    from matplotlib import colormaps
    cmap = colormaps['tab20' if num > 10 else 'tab10']
    return (np.array([cmap(i % cmap.N)[:3] for i in range(num)]) * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, labels: np.ndarray, colors: np.ndarray, alpha: float,
            boundaries: bool = True) -> np.ndarray:
    """Fill each label with its colour at opacity ``alpha`` over ``image``.

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB.
        labels (np.ndarray): (H, W) int ids, indices into ``colors``.
        colors (np.ndarray): (num_ids, 3) uint8.
        alpha (float): Opacity of the fills in [0, 1] (0: boundaries only).
        boundaries (bool): Draw the label boundaries. Default True.

    Returns:
        np.ndarray: (H, W, 3) uint8 RGB.
    """
    from skimage.segmentation import mark_boundaries
    out = image.astype(np.float64) / 255
    if alpha > 0:
        out = (1 - alpha) * out + alpha * colors[labels].astype(np.float64) / 255
    if boundaries:
        # +1: 'inner' treats label 0 as background and would skip its side.
        out = mark_boundaries(out, labels + 1, color=BOUNDARY_COLOR, mode='inner')
    return (out * 255).round().clip(0, 255).astype(np.uint8)


def heatmap(image: np.ndarray, values: np.ndarray, alpha: float,
            cmap: str = 'RdBu_r') -> Tuple[np.ndarray, float]:
    """Signed values over ``image``, symmetric colour scale around 0.

    Returns:
        tuple: (H, W, 3) uint8 RGB and the scale (the colour limit).
    """
    from matplotlib import colormaps
    limit = float(np.abs(values).max()) or 1.0
    colored = colormaps[cmap]((values / limit + 1) / 2)[..., :3]
    a = max(alpha, 0.5)
    out = (1 - a) * image.astype(np.float64) / 255 + a * colored
    return (out * 255).round().clip(0, 255).astype(np.uint8), limit


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour enlargement (stage-grid views are tiny)."""
    return image.repeat(factor, 0).repeat(factor, 1) if factor > 1 else image


def save_png(path: str, image: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB array as PNG."""
    from PIL import Image
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f'save_png: expected (H, W, 3) uint8 RGB, got {image.dtype} '
                         f'{image.shape}')
    # Level 1: a third of the default's time, files ~20 % larger.
    Image.fromarray(image, mode='RGB').save(path, format='PNG', compress_level=1)


def draw_sheet(panels: Sequence[Tuple[str, np.ndarray]],
               legend: Optional[List[Tuple[str, Sequence[int]]]] = None,
               notes: Sequence[str] = (), panel_inches: float = 3.2) -> np.ndarray:
    """One row of titled panels with a legend and notes below, as an RGB array.

    Args:
        panels: (title, (H, W, 3) uint8 RGB image) per panel, all one size.
        legend: (label, RGB colour 0..255) entries, e.g. the merged groups;
            the boundary colour is always listed.
        notes: Lines of text under the legend (e.g. the per-stage numbers).
        panel_inches (float): Width of a panel.

    Returns:
        np.ndarray: (h, w, 3) uint8 RGB.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    h, w = panels[0][1].shape[:2]
    image_in = panel_inches * h / w
    title_in, legend_in, line_in = 0.45, 0.3, 0.16
    footer_in = legend_in + line_in * len(notes) + 0.05
    height = image_in + title_in + footer_in
    fig = Figure(figsize=(panel_inches * len(panels), height), dpi=100)
    FigureCanvasAgg(fig)
    n = len(panels)
    for i, (title, image) in enumerate(panels):
        ax = fig.add_axes((i / n + 0.003, footer_in / height, 1 / n - 0.006, image_in / height))
        ax.imshow(image, interpolation='nearest')
        ax.set_axis_off()
        # Figure text, not ax.set_title: placing axes titles lays out the
        # (hidden) ticks, half the time of the whole sheet.
        fig.text((i + 0.5) / n, (footer_in + image_in + 0.05) / height, title, ha='center',
                 va='bottom', fontsize=8)
    handles = [Patch(facecolor=np.asarray(c) / 255, edgecolor='k', label=t)
               for t, c in (legend or [])]
    handles.append(Patch(facecolor='none', edgecolor=BOUNDARY_COLOR, label='cluster boundary'))
    fig.legend(handles=handles, loc='upper center', ncol=min(len(handles), 10), fontsize=7,
               frameon=False, bbox_to_anchor=(0.5, (footer_in - 0.02) / height),
               handlelength=1.2, columnspacing=1.0, borderpad=0)
    for i, line in enumerate(notes):
        fig.text(0.5, (line_in * (len(notes) - i - 1) + 0.05) / height, line, ha='center',
                 va='bottom', fontsize=7)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def move_files(src_dir: str, dst_dir: str) -> List[str]:
    """Move every file of ``src_dir`` into ``dst_dir`` (created if needed),
    each by an atomic rename; returns the destination paths."""
    os.makedirs(dst_dir, exist_ok=True)
    moved = []
    for name in sorted(os.listdir(src_dir)):
        dst = os.path.join(dst_dir, name)
        os.replace(os.path.join(src_dir, name), dst)
        moved.append(dst)
    return moved
