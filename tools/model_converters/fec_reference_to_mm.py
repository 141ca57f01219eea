"""Convert an FEC checkpoint of the authors' implementation to fec-mm's layout.

Usage:
    python tools/model_converters/fec_reference_to_mm.py IN.pth OUT.pth

The output holds ``{'state_dict': ...}`` with the backbone under
``backbone.`` and, for classification checkpoints, the linear head as
``head.fc.*``, so it serves as ``load_from`` of an mmpretrain
ImageClassifier and as ``init_cfg=dict(type='Pretrained', checkpoint=OUT)``
of the FEC backbone in any task.
"""
import argparse
import os
import os.path as osp
from collections import OrderedDict
from typing import Optional, Sequence

from fec_mm.checkpoints import torch_save_atomic
from fec_mm.models.checkpoint import (
    convert_reference_state_dict,
    is_reference_layout,
    read_state_dict,
)
from fec_mm.outputs import check_output_file


def convert(src: str, dst: str) -> int:
    """Convert ``src`` and save it to ``dst``; returns the number of tensors."""
    check_output_file(dst, 'output')  # before the work
    state_dict = read_state_dict(src)
    if not is_reference_layout(state_dict):
        raise ValueError(f'{src} is not in the authors\' layout (no network.* keys); '
                         'fec-mm checkpoints need no conversion')
    converted = OrderedDict()
    for key, value in convert_reference_state_dict(state_dict).items():
        converted[key if key.startswith('head.') else 'backbone.' + key] = value
    if osp.dirname(dst):
        os.makedirs(osp.dirname(dst), exist_ok=True)
    torch_save_atomic({'state_dict': converted, 'meta': {'converted_from': osp.basename(src)}},
                      dst)
    return len(converted)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='authors\' checkpoint')
    parser.add_argument('dst', help='output path')
    args = parser.parse_args(argv)
    try:
        replaced = check_output_file(args.dst, 'output')
        count = convert(args.src, args.dst)
    except (OSError, ValueError) as err:  # bad input or output, named
        parser.exit(1, f'{parser.prog}: error: {err}\n')
    print(f'converted {count} tensors: {args.src} -> {args.dst}'
          + (' (replaced the existing file)' if replaced else ''))


if __name__ == '__main__':
    main()
