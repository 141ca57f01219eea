"""Partitions of an image into segments: FEC's final clusters traced to
pixels, a Context Clusters block's assignments traced to pixels, and the
baselines they are compared with (a regular grid, SLIC at a matched count).
See :mod:`fec_mm.analysis.cluster_quality`."""
import copy
import math
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config

from ..models.checkpoint import backbone_state_dict, check_weights_fit, read_state_dict
from ..models.coc_checkpoint import check_family
from ..models.families import convert_authors_file
from ..visualization.cluster_maps import cluster_maps


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
        x = (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
             - self.mean) / self.std
        # The blocks are called one by one (not the stage's Sequential), so
        # the last block's output is the final stage's map (before the norm).
        handle = self.backbone.stages[-1][-1].register_forward_hook(self._keep_final)
        try:
            # Pads to size_divisor with zeros after normalisation, bottom/right
            # (what mmdet/mmseg pad with), records, traces and crops back.
            maps = cluster_maps(self.backbone, x)
        finally:
            handle.remove()
        feats = self._final[0].flatten(1).T.contiguous()
        return maps.final_map[0].numpy().astype(np.int64), feats


class CoCPartitioner:
    """One Context Clusters block's assignments, traced to pixels.

    CoC has no cluster pooling, so there is no final partition as FEC's: the
    partition is head 0's assignment in the last block of one stage (default
    the last stage), each pixel labelled with the center of the token that
    covers it (:func:`fec_mm.visualization.coc_cluster_maps.coc_cluster_maps`;
    ids global on the block's center grid, so clusters of different regions
    never share an id). A cluster's feature, for merging, is the mean of its
    members' tokens at the block's output.

    Args:
        backbone (nn.Module): A ContextCluster backbone.
        mean, std (Sequence[float]): Per-channel normalisation of RGB pixels.
        stage (int, optional): Stage whose last block is read (default last).
    """

    def __init__(self, backbone: nn.Module, mean: Sequence[float], std: Sequence[float],
                 stage: Optional[int] = None) -> None:
        n = backbone.num_stages
        self.stage = n - 1 if stage is None else stage
        if isinstance(self.stage, bool) or not 0 <= self.stage < n:
            raise ValueError(f'cluster quality: no CoC stage {stage}: the backbone runs '
                             f'stages 0..{n - 1}')
        self.backbone = backbone.eval()
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self._out: Optional[torch.Tensor] = None

    def _keep(self, module, args, out) -> None:
        self._out = out.detach()

    @torch.no_grad()
    def __call__(self, image: np.ndarray) -> Tuple[np.ndarray, torch.Tensor]:
        """Partition one (H, W, 3) uint8 RGB image.

        Returns:
            tuple: (H, W) int64 center id of every pixel (head 0) and the
            (num_centers, C) mean output feature of each center's members
            (zeros for a center without members).
        """
        import torch.nn.functional as F

        from ..visualization.coc_cluster_maps import coc_cluster_maps
        h, w = image.shape[:2]
        x = (torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()
             - self.mean) / self.std
        d = self.backbone.size_divisor  # zeros after normalisation, bottom/right
        x = F.pad(x, (0, -w % d, 0, -h % d))[None]
        block = self.backbone.stages[self.stage][-1]
        handle = block.register_forward_hook(self._keep)
        try:
            blocks = coc_cluster_maps(self.backbone, x)
        finally:
            handle.remove()
        last = [b for b in blocks if b.stage == self.stage][-1]
        s = 4 * 2**self.stage
        th, tw = -(-h // s), -(-w // s)  # the tokens covering the image
        index = last.pixels[0, 0, ::s, ::s][:th, :tw].reshape(-1)
        tokens = self._out[0, :, :th, :tw].flatten(1).T
        num = last.center_grid[0] * last.center_grid[1]
        feats = torch.zeros(num, tokens.shape[1]).index_add_(0, index, tokens)
        counts = torch.bincount(index, minlength=num).clamp(min=1)
        labels = last.pixels[0, 0, :h, :w].numpy().astype(np.int64)
        return labels, feats / counts[:, None]


def backbone_from_config(cfg: Config, checkpoint: Optional[str] = None,
                         seed: int = 0) -> nn.Module:
    """The config's FEC or ContextCluster backbone, with the checkpoint's
    backbone weights or, without one, randomly initialised from ``seed``
    (the default init).

    Raises:
        ValueError: The config's backbone is neither, or the checkpoint holds
            no backbone weights, weights of another arch or of the other
            family, or misses some.
    """
    from mmengine.registry import MODELS

    import fec_mm.models  # noqa: F401  (registers FEC)
    bcfg = copy.deepcopy(cfg.model.get('backbone'))
    if bcfg is None or bcfg.get('type') not in ('FEC', 'ContextCluster'):
        raise ValueError('cluster quality: the config\'s model.backbone must be '
                         "type='FEC' or 'ContextCluster', got "
                         f"{None if bcfg is None else bcfg.get('type')!r}")
    bcfg['init_cfg'] = None
    torch.manual_seed(seed)
    backbone = MODELS.build(bcfg)
    if checkpoint is None:  # construction applies the default init (docs/notes/design.md §2)
        return backbone.eval()
    state_dict, _, _ = convert_authors_file(read_state_dict(checkpoint))  # the authors' too
    prefix = 'backbone.' if any(k.startswith('backbone.') for k in state_dict) else ''
    if bcfg['type'] == 'ContextCluster':
        weights = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        check_family('ContextCluster', weights, checkpoint)
        # Converts the authors' layout and refuses other shapes (another arch).
        missing = backbone.load_state_dict(weights, strict=False).missing_keys
        if missing:
            raise ValueError(f'cluster quality: checkpoint {checkpoint} lacks {len(missing)} '
                             'weights of the config\'s ContextCluster backbone, e.g. '
                             f'{missing[:3]}: a checkpoint of another model or arch?')
        return backbone.eval()
    check_weights_fit(backbone, state_dict, prefix)
    weights = backbone_state_dict(state_dict, prefix or None)
    missing = [k for k in backbone.state_dict() if k not in weights]
    if missing:
        raise ValueError(f'cluster quality: checkpoint {checkpoint} lacks {len(missing)} '
                         f'weights of the config\'s FEC backbone, e.g. {missing[:3]}: a '
                         'checkpoint of another model or arch?')
    backbone.load_state_dict(weights, strict=False)
    return backbone.eval()


def upscale_labels(labels: np.ndarray, shape: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to ``shape`` (pixel centres)."""
    h, w = labels.shape
    H, W = shape
    if (h, w) == (H, W):
        return labels
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]
