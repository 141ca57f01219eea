"""Convert a checkpoint of the authors' FEC implementation to fec-mm's names.

Usage:
    python tools/model_converters/fec_reference_to_mm.py IN.pth OUT.pth

Works for each file they released: classification (timm's layout; the
linear classifier becomes mmpretrain's ``head.fc.*``), Mask R-CNN (mmdet
2.24) and Semantic FPN (mmseg 0.24), every size. Backbone keys are renamed
(``fec_mm.models.checkpoint.convert_reference_key``), neck and head keys are
kept (mmdet 3.x and mmseg 1.x use the 2.x / 0.x names and shapes for these
models), the mmcv 1.x meta and the optimizer state are dropped, the class
names and palette are kept as ``meta.dataset_meta``. ``OUT`` is written
atomically. fec-mm also loads the authors' files as they are; converting
gives a file that plain mmengine/mmdet/mmseg/mmpretrain (without fec_mm's
loader) can load, and skips the conversion at every load. The work lives in
``fec_mm.models.authors_checkpoint``.
"""
import argparse
from typing import Optional, Sequence

from fec_mm.models.authors_checkpoint import convert_authors_checkpoint
from fec_mm.outputs import check_output_file


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='authors\' checkpoint')
    parser.add_argument('dst', help='output path')
    args = parser.parse_args(argv)
    try:
        replaced = check_output_file(args.dst, 'output')  # before the work
        report = convert_authors_checkpoint(args.src, args.dst)
    except (OSError, ValueError) as err:  # bad input or output, named
        parser.exit(1, f'{parser.prog}: error: {err}\n')
    dataset_meta = report['dataset_meta'] or {}
    classes = dataset_meta.get('classes')
    print(f"{args.src}: the authors' {report['layout']}\n"
          f"  converted: {report['converted']} keys mapped to fec-mm's names "
          "(backbone, classifier)\n"
          f"  kept: {report['kept']} keys as they are (neck, heads)\n"
          f"  dataset_meta: {len(classes) if classes else 'no'} class names"
          f"{', palette' if 'palette' in dataset_meta else ''}\n"
          f"  dropped: {', '.join(report['dropped']) or 'nothing'}\n"
          f"  written: {args.dst}" + (' (replaced the existing file)' if replaced else ''))
    return report


if __name__ == '__main__':
    main()
