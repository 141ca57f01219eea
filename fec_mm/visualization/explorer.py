"""The interactive cluster explorer: one self-contained HTML file (docs/notes/design.md §5).

:func:`write_explorer` writes a page that shows, for any pixel pointed at,
the cluster that took it at every pooling stage up to the final cluster,
each with its member pixels lit; the mixers' per-head assignments of the
chosen blocks; and, for classifiers, each final cluster's exact
contribution to a chosen class logit. Everything comes from one recorded
forward pass (:func:`~.cluster_maps.cluster_maps`): the maps are the
recorded pooling and mixer indices traced to the stem grid (:mod:`.trace`),
nothing is recomputed in the page.

What is embedded, compactly (no server, nothing fetched): the image as a
PNG, and per map typed arrays (little-endian), deflated (zlib) and base64
encoded, which the page inflates with the browser's ``DecompressionStream``.
Maps are stored per stem token (4×4 pixels, :data:`.trace.STEM_STRIDE`),
mixer maps on their own stage grid; the page expands them exactly. Mixer
cosines are quantized to 16 bits (error ≤ 1.6e-5); pooling cosines,
contributions and logits are float32.
"""
import base64
import io
import json
import os
import os.path as osp
import tempfile
import zlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from skimage.measure import label

from .cluster_maps import ClusterMaps, valid_grid
from .contributions import class_contributions
from .explorer_page import PAGE_TEMPLATE
from .merge import merge_clusters
from .render import group_palette
from .stats import stage_stats
from .trace import STEM_STRIDE, head_map_on_stem
from .views import ViewOptions

COS_SCALE = 32767.5  # uint16 code of a cosine c in [-1, 1]: round((c + 1) · COS_SCALE)


def _array(x: np.ndarray, dtype: str) -> dict:
    """A typed array for the page: dtype, shape and deflated base64 bytes."""
    data = np.ascontiguousarray(x, dtype=np.dtype(dtype).newbyteorder('<'))
    return dict(dtype=dtype, shape=list(data.shape),
                b64=base64.b64encode(zlib.compress(data.tobytes(), 6)).decode('ascii'))


def _id_dtype(num_ids: int) -> str:
    return 'uint8' if num_ids <= 2**8 else 'uint16' if num_ids <= 2**16 else 'uint32'


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def _pieces(stem_map: np.ndarray, num_ids: int) -> np.ndarray:
    """4-connected pieces of every id of a (rows, cols) map (0 for absent
    ids): the per-cluster fragmentation, as ``stats.count_components`` counts
    it for a whole stage."""
    comps = label(stem_map, background=-1, connectivity=1)
    # Each piece has one id: the id of every piece, then pieces per id.
    id_of_piece = np.zeros(int(comps.max()) + 1, dtype=np.int64)
    id_of_piece[comps.ravel()] = stem_map.ravel()
    return np.bincount(id_of_piece[1:], minlength=num_ids)


def _token_pixels(image_size: Tuple[int, int], rows0: int, cols0: int) -> np.ndarray:
    """(rows0, cols0) pixels of the image under each stem token (16 but at
    the bottom and right edges of an image whose sides are not multiples of 4)."""
    h = np.minimum(STEM_STRIDE, image_size[0] - STEM_STRIDE * np.arange(rows0))
    w = np.minimum(STEM_STRIDE, image_size[1] - STEM_STRIDE * np.arange(cols0))
    return h[:, None] * w[None, :]


def _sizes(stem_map: np.ndarray, weights: np.ndarray, num_ids: int) -> np.ndarray:
    """Pixels per id of a stem-grid map (exact: each stem token's pixels)."""
    return np.bincount(stem_map.ravel(), weights=weights.ravel(),
                       minlength=num_ids).round().astype(np.int64)


def _png_b64(image: np.ndarray) -> str:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image, mode='RGB').save(buf, format='PNG', compress_level=6)
    return base64.b64encode(buf.getvalue()).decode('ascii')


def explorer_payload(image: np.ndarray, maps: ClusterMaps, options: ViewOptions, b: int = 0,
                     meta: Optional[dict] = None) -> dict:
    """Everything the page shows, JSON-ready (see the module docstring).

    Args:
        image (np.ndarray): (H, W, 3) uint8 RGB, the image the maps were
            computed on (``maps.image_size``).
        maps (ClusterMaps): From :func:`~.cluster_maps.cluster_maps`.
        options (ViewOptions): ``blocks`` / ``heads``: the mixers shown
            (default: every block, every head); ``groups``, ``merge_*`` and
            ``seed``: the merge groups of the final clusters; ``fc``,
            ``class_names``, ``target_class``: the class contributions.
        b (int): Image of the batch.
        meta (dict, optional): Shown in the page's header (image, config...).

    Returns:
        dict: ``stem`` (valid stem grid), ``stages`` (one per pooling:
        stage-k id, cosine of the point to its center, per stem token;
        per-cluster pixel counts and pieces), ``blocks`` (per mixer: center
        ids and cosines per head on the stage grid, pixel counts and pieces
        per center), ``groups``, ``classification``, ``image`` (PNG base64).
    """
    H, W = maps.image_size
    if image.shape != (H, W, 3) or image.dtype != np.uint8:
        raise ValueError(f'explorer: image must be ({H}, {W}, 3) uint8 RGB, got '
                         f'{image.dtype} {image.shape}')
    rows0, cols0 = valid_grid(maps.image_size, 0)
    grid0 = maps.grids[0]
    stats = stage_stats(maps, b)
    weights = _token_pixels(maps.image_size, rows0, cols0)
    stages: List[dict] = []
    for k in range(1, maps.num_stages):
        rows, cols = maps.grids[k]
        ids = _np(maps.stem_maps[k][b, :rows0, :cols0])
        # The cosine of the point (the stage k-1 token this stem token feeds)
        # with the center it joined, as the pooling recorded it.
        prev = maps.stem_maps[k - 1][b, :rows0, :cols0].reshape(-1)
        cos = maps.poolings[k - 1].cos[b, 0].reshape(-1)[prev].reshape(rows0, cols0)
        sizes = _sizes(ids, weights, rows * cols)
        stages.append(dict(
            stage=k, grid=[rows, cols], stats=stats[k - 1],
            ids=_array(ids, _id_dtype(rows * cols)), cos=_array(_np(cos), 'float32'),
            sizes=_array(sizes, 'uint32'),
            pieces=_array(_pieces(ids, rows * cols), 'uint32')))
    blocks = _block_payload(maps, options, b, weights)
    payload = dict(version=1, meta=dict(meta or {}), image_size=[H, W], stride=STEM_STRIDE,
                   stem=[rows0, cols0], stem_grid=list(grid0), stages=stages, blocks=blocks,
                   image=_png_b64(image))
    final = maps.final_map[b]
    if options.groups is not None:
        features = maps.merge_features(options.merge_feature)[b]
        merged = merge_clusters(final, features.float(), options.groups,
                                method=options.merge_method, seed=options.seed)
        # The merge is a function of the final cluster: one group per cluster.
        n_final = maps.grids[-1][0] * maps.grids[-1][1]
        group_of = torch.full((n_final,), -1, dtype=torch.long)
        group_of[final.reshape(-1)] = merged.reshape(-1)
        payload['groups'] = dict(
            k=options.groups, feature=options.merge_feature, method=options.merge_method,
            seed=options.seed, group_of=_array(_np(group_of), 'int32'),
            colors=group_palette(options.groups).tolist())
    if options.fc is not None:
        with torch.no_grad():
            contributions = class_contributions(maps.final, options.fc)[b]
        logits = contributions.sum(-1)
        names = options.class_names
        num = contributions.shape[0]
        target = (options.target_class if options.target_class is not None
                  else int(logits.argmax()))
        payload['classification'] = dict(
            names=[str(n) for n in names] if names else [f'class {c}' for c in range(num)],
            target=target, logits=_array(_np(logits.float()), 'float32'),
            contributions=_array(_np(contributions.float()), 'float32'))
    return payload


def _block_payload(maps: ClusterMaps, options: ViewOptions, b: int,
                   weights: np.ndarray) -> List[dict]:
    blocks = options.blocks or [(s, j) for s in range(maps.num_stages)
                                for j in range(maps.depths[s])]
    out = []
    for s, j in blocks:
        record = maps.encoder(s, j)
        heads = list(options.heads) if options.heads else list(range(record.index.shape[1]))
        num = record.num_centers
        rows0, cols0 = weights.shape
        on_stem = _np(head_map_on_stem(record, maps.stem_maps[s])[b, heads, :rows0, :cols0])
        sizes = np.stack([_sizes(m, weights, num) for m in on_stem])
        pieces = np.stack([_pieces(m, num) for m in on_stem])
        cos = record.cos[b, heads].clamp(-1, 1)
        out.append(dict(
            name=f'{s}.{j}', stage=s, block=j, heads=heads, centers=list(record.center_grid),
            fold=record.fold, grid=list(record.index.shape[-2:]),
            ids=_array(_np(record.index[b, heads]), _id_dtype(num)),
            cos=_array(_np(((cos.double() + 1) * COS_SCALE).round()), 'uint16'),
            sizes=_array(sizes, 'uint32'), pieces=_array(pieces, 'uint32')))
    return out


def explorer_html(payload: dict, title: str = 'FEC cluster explorer') -> str:
    """The page for a payload of :func:`explorer_payload`."""
    from html import escape
    data = json.dumps(payload, separators=(',', ':')).replace('</', '<\\/')
    return (PAGE_TEMPLATE.replace('__TITLE__', escape(title))
            .replace('__DATA__', data))


def check_html_path(path: str) -> str:
    """Fail early, naming the problem, when ``path`` cannot be written (its
    folder is missing, not a folder, or not writable); returns it absolute."""
    path = osp.abspath(path)
    if osp.isdir(path):
        raise ValueError(f'--html {path}: is a folder; give a file name, e.g. explorer.html')
    folder = osp.dirname(path)
    if not osp.exists(folder):
        walk = folder
        while not osp.exists(walk):
            walk = osp.dirname(walk)
        if not osp.isdir(walk):
            raise ValueError(f'--html {path}: {walk} is a file, not a folder')
        raise ValueError(f'--html {path}: the folder {folder} does not exist')
    if not osp.isdir(folder):
        raise ValueError(f'--html {path}: {folder} is a file, not a folder')
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f'--html {path}: the folder {folder} is not writable')
    return path


def write_explorer(path: str, image: np.ndarray, maps: ClusterMaps, options: ViewOptions,
                   b: int = 0, meta: Optional[dict] = None,
                   title: str = 'FEC cluster explorer') -> str:
    """Write the explorer of image ``b`` to ``path``, atomically (a temporary
    file beside it, renamed): a failure leaves nothing behind.

    Returns:
        str: The absolute path written.

    Raises:
        ValueError: ``path`` cannot be written (named).
    """
    path = check_html_path(path)
    page = explorer_html(explorer_payload(image, maps, options, b, meta), title)
    fd, tmp = tempfile.mkstemp(prefix='.' + osp.basename(path) + '.', suffix='.tmp',
                               dir=osp.dirname(path))
    try:
        with os.fdopen(fd, 'w', encoding='utf-8') as f:
            f.write(page)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        if osp.exists(tmp):
            os.unlink(tmp)
        raise ValueError(f'--html {path}: cannot write: {err}') from err
    return path


def payload_arrays(payload: dict) -> Dict[str, np.ndarray]:
    """Decode a payload's arrays back to numpy (for tests and inspection),
    by dotted path, e.g. ``'stages.0.ids'``, ``'blocks.3.cos'``."""
    out: Dict[str, np.ndarray] = {}

    def walk(node, prefix: Tuple[str, ...]):
        if isinstance(node, dict) and 'b64' in node and 'dtype' in node:
            raw = zlib.decompress(base64.b64decode(node['b64']))
            out['.'.join(prefix)] = np.frombuffer(
                raw, np.dtype(node['dtype']).newbyteorder('<')).reshape(node['shape'])
        elif isinstance(node, dict):
            for k, v in node.items():
                walk(v, prefix + (str(k),))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, prefix + (str(i),))
    walk(payload, ())
    return out


__all__: Sequence[str] = ('explorer_payload', 'explorer_html', 'write_explorer',
                          'check_html_path', 'payload_arrays')
