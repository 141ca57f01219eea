"""Params and FLOPs of FEC small/base/large at the paper's three task settings.

Usage:
    python tools/analysis_tools/flops_table.py [--archs small base large]

Rows (docs/notes/design.md §3 settings):
- cls 224²: the ImageNet classifier of configs/fec_small_in1k.py (backbone,
  its last GroupNorm, global pooling, 1000-class head), centers (4, 4, 2, 2);
- seg 512²: the backbone, centers (10, 10, 5, 5), no folds;
- det 800×1344: the backbone, centers 7, folds (2, 2, 1, 1) and without folds.
FLOPs (multiply-adds, fvcore's convention) from mmengine's FlopAnalyzer with
FEC's handles (``fec_mm.analysis``), split into the clustering ops (center
pooling and point-center similarity) and the rest. Paper column: the paper's
printed figures (params in units of 2^20, FLOPs at 224² only; the paper gives
no backbone FLOPs at the other sizes).
"""
import argparse
from typing import List, Optional

import torch
from mmengine.config import Config

import fec_mm  # noqa: F401  (FEC and its FLOP handles)
from fec_mm.analysis import config_flops, count_flops
from fec_mm.models import FEC

ARCHS = ('small', 'base', 'large')
CLS_CONFIG = 'configs/fec_small_in1k.py'
# The paper's figures (docs/notes/design.md §3): params (M, printed in units of 2^20)
# and GFLOPs of the classifier at 224².
PAPER = {'small': (5.5, 1.4), 'base': (14.4, 3.4), 'large': (28.3, 6.5)}
SETTINGS = (
    # name, (H, W), num_centers, folds
    ('seg 512²', (512, 512), (10, 10, 5, 5), (1, 1, 1, 1)),
    ('det 800×1344, folds 2,2,1,1', (800, 1344), (7, 7, 7, 7), (2, 2, 1, 1)),
    ('det 800×1344, no folds', (800, 1344), (7, 7, 7, 7), (1, 1, 1, 1)),
)


def _row(arch: str, setting: str, count, paper: str) -> str:
    g = 1e9
    return (f'| {arch} | {setting} | {count.params / 1e6:.2f} ({count.params / 2**20:.2f}) | '
            f'{count.flops / g:.3f} | {count.clustering / g:.3f} | {count.rest / g:.3f} | '
            f'{100 * count.clustering / count.flops:.0f} % | {paper} |')


def table(archs: List[str]) -> List[str]:
    """Markdown lines of the table."""
    lines = ['| arch | setting | params M (2^20) | GFLOPs | clustering | rest | '
             'clustering share | paper (params 2^20 M / GFLOPs) |',
             '|---|---|---|---|---|---|---|---|']
    for arch in archs:
        cfg = Config.fromfile(CLS_CONFIG)
        # train_cfg only holds the batch augmentations (no FLOPs, a log line).
        cfg.merge_from_dict({'model.backbone.arch': arch, 'model.train_cfg': None,
                             'model.head.in_channels': FEC.arch_settings[arch]['widths'][3]})
        count, _ = config_flops(cfg, (224, 224))
        params, flops = PAPER[arch]
        lines.append(_row(arch, 'cls 224² (classifier)', count, f'{params} / {flops}'))
        for name, shape, centers, folds in SETTINGS:
            backbone = FEC(arch, num_centers=centers, folds=folds).eval()
            with torch.no_grad():
                count = count_flops(backbone, (torch.randn(1, 3, *shape),))
            lines.append(_row(arch, f'{name} (backbone)', count, '–'))
    return lines


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--archs', nargs='+', default=list(ARCHS), choices=ARCHS)
    args = parser.parse_args(argv)
    print('\n'.join(table(args.archs)))


if __name__ == '__main__':
    main()
