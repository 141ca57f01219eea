"""Share of flipped cluster assignments per layer under bf16/fp16 autocast.

Usage:
    python tools/analysis_tools/low_precision_flips.py [CONFIG] [--checkpoint CKPT]
        [--arch small] [--size 224] [--repeat 0] [--ops-impl auto]

Runs the FEC backbone (of CONFIG's model, or ``FEC(arch)``) in float32 and
under autocast with bfloat16 and float16, each without and with
``fp32_assignments=True``, on skimage's astronaut photograph resized to
``--size`` (normalised with ImageNet's mean and std), and prints a markdown
table: per clustering layer, the % of points whose center differs from
float32's; the largest relative error of the output maps; with --repeat N the
fastest forward time. See docs/notes/low_precision.md.
"""
import argparse
from typing import List, Optional

import torch
import torch.nn.functional as F

from fec_mm.analysis.low_precision import assignment_flips, markdown_table
from fec_mm.models import FEC, load_fec_checkpoint

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def astronaut(size: int) -> torch.Tensor:
    """(1, 3, size, size) RGB astronaut, normalised as ImageNet models expect."""
    from skimage import data
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1).float()[None]
    img = F.interpolate(img, size=(size, size), mode='bilinear', antialias=True)
    return (img - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def build_backbone(args: argparse.Namespace) -> FEC:
    if args.config:
        from mmengine.config import Config
        from mmengine.registry import MODELS
        cfg = Config.fromfile(args.config).model.backbone
        cfg.update(ops_impl=args.ops_impl, init_cfg=None)
        backbone = MODELS.build(cfg)
    else:
        backbone = FEC(arch=args.arch, ops_impl=args.ops_impl)
    if args.checkpoint:
        load_fec_checkpoint(backbone, args.checkpoint, prefix='backbone.' if args.config
                            else None)
    return backbone.eval()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', help='config whose model.backbone is FEC')
    parser.add_argument('--checkpoint', help='weights (default: seeded initial weights)')
    parser.add_argument('--arch', default='small', help='without CONFIG: FEC arch')
    parser.add_argument('--size', type=int, default=224, help='image side (default 224)')
    parser.add_argument('--repeat', type=int, default=0, help='time each run (fastest of N)')
    parser.add_argument('--ops-impl', default='auto', help='ops_impl (default auto)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the initial weights')
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    backbone = build_backbone(args)
    print(markdown_table(assignment_flips(backbone, astronaut(args.size), repeat=args.repeat)))


if __name__ == '__main__':
    main()
