"""Publish a training checkpoint: ``python tools/model_converters/publish_model.py IN OUT``.

As mmdet's ``publish_model.py``: keeps ``state_dict`` and the ``meta`` the
inferencers read (``dataset_meta``, ``cfg``), drops optimizer, schedulers,
message hub and RNG states, and writes ``OUT`` with the first 8 hex digits
of its sha256 appended (``fec_maskrcnn_demo.pth`` ->
``fec_maskrcnn_demo-1a2b3c4d.pth``). The result loads with a plain
``torch.load(path, weights_only=True)``. The work lives in
``fec_mm.checkpoints.publish``.
"""
import argparse
import glob
import os.path as osp
from typing import Optional, Sequence

from fec_mm.checkpoints import publish_checkpoint


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('in_file', help='checkpoint written by training')
    parser.add_argument('out_file', help='output name, ending with .pth')
    args = parser.parse_args(argv)
    stem = glob.escape(osp.splitext(args.out_file)[0])
    before = set(glob.glob(f'{stem}-*.pth'))
    try:
        final = publish_checkpoint(args.in_file, args.out_file)
    except (OSError, ValueError) as err:  # bad input or output, named
        parser.exit(1, f'{parser.prog}: error: {err}\n')
    replaced = ' (replaced the existing identical file)' if final in before else ''
    print(f'published {args.in_file} -> {final} ({osp.getsize(final) / 2**20:.1f} MiB){replaced}')
    return final


if __name__ == '__main__':
    main()
