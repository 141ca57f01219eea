"""Convert a Context Clusters checkpoint of the authors to fec-mm's layout.

Usage:
    python tools/model_converters/coc_reference_to_mm.py IN OUT

IN: one of the authors' released files (github.com/ma-xu/Context-Cluster,
README links): an ImageNet classifier (``network.*``, ``norm``, ``head`` at
the top level or under 'model' / 'state_dict'), or a Mask R-CNN (mmdet 2.24)
or Semantic FPN (mmseg 0.24) model (``backbone.network.*`` beside the neck and
heads, whose names mmdet 3.x / mmseg 1.x kept). Older dense files hold the
block MLPs as 1×1 convolutions: they are reshaped to ``nn.Linear`` and counted
in the report.

OUT holds ``{'state_dict': ..., 'meta': ...}`` with the backbone under
``backbone.`` (our names), the classifier head as ``head.fc.*`` and their
classes (and palette) as mmengine's ``dataset_meta``: ``load_from`` of our configs
in configs/context_cluster/, or ``init_cfg=dict(type='Pretrained',
checkpoint=OUT)`` of the ContextCluster backbone. (The backbone also converts
the authors' layout itself while loading; converting once keeps the file
in the names every tool expects.) An FEC file is refused.
"""
import argparse
from typing import Optional, Sequence, Tuple

from fec_mm.models.authors_checkpoint import convert_authors_checkpoint
from fec_mm.models.checkpoint import read_state_dict
from fec_mm.models.coc_checkpoint import check_family, is_coc_reference_layout


def convert(src: str, dst: str) -> Tuple[int, int, str]:
    """Convert ``src`` to ``dst``; returns (tensors, MLP weights reshaped, kind)."""
    state_dict = read_state_dict(src)
    dense = any(k.startswith('backbone.') for k in state_dict)
    prefix = 'backbone.' if dense else ''
    backbone_keys = [k[len(prefix):] for k in state_dict if k.startswith(prefix)]
    check_family('ContextCluster', backbone_keys, src)
    if not is_coc_reference_layout(backbone_keys):
        raise ValueError(f"{src} is not in the authors' Context Clusters layout (no "
                         f'{prefix}network.1.proj.* keys); fec-mm checkpoints need no conversion')
    # the one conversion of the authors' files (fec_mm.models.families), as loading does
    report = convert_authors_checkpoint(src, dst)
    kind = 'dense (Mask R-CNN / Semantic FPN)' if dense else 'classification'
    return report['converted'] + report['kept'], report['reshaped'], kind


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help="the authors' checkpoint")
    parser.add_argument('dst', help='output path')
    args = parser.parse_args(argv)
    count, reshaped, kind = convert(args.src, args.dst)
    print(f'converted {count} tensors ({kind} checkpoint): {args.src} -> {args.dst}')
    if reshaped:
        print(f'{reshaped} MLP weights were 1x1 convolutions (the authors\' issue #31) and were '
              'reshaped to nn.Linear (out, in)')


if __name__ == '__main__':
    main()
