"""Print the parameter count of every FEC preset (with a 1000-class head).

Usage:
    python tools/analysis_tools/count_params.py

The spec's counts were measured on the authors' implementation; equal numbers
mean the layer structure matches theirs.
"""
import torch.nn as nn

from fec_mm.models import FEC

SPEC_PARAMS = {'small': 5_727_528, 'base': 15_086_848, 'large': 29_720_344}


def count_params(arch: str, num_classes: int = 1000) -> int:
    """Parameters of the FEC classifier ``arch``: backbone with its last norm
    plus a linear head (the frozen pooling similarity convs included)."""
    backbone = FEC(arch=arch, out_indices=(3,))
    head = nn.Linear(backbone.arch['widths'][3], num_classes)
    return sum(p.numel() for m in (backbone, head) for p in m.parameters())


def main() -> None:
    print('| arch  | params (ours) | params (reference impl., spec) | equal |')
    print('|-------|---------------|--------------------------------|-------|')
    for arch, expected in SPEC_PARAMS.items():
        ours = count_params(arch)
        print(f'| {arch:5} | {ours:13,} | {expected:30,} | {ours == expected!s:5} |')


if __name__ == '__main__':
    main()
