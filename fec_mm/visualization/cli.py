"""``tools/visualization/vis_clusters.py``: cluster maps of one image.

FEC backbones: every pooling stage traced to pixels, mixer heads, merged
groups, class contributions, or the interactive explorer (``--html``).
ContextCluster backbones (``--arch coc-<preset>`` or a config with
``type='ContextCluster'``): each encoding block's per-head assignments within
its regions, traced to pixels (:mod:`.coc_cluster_maps`), one PNG sheet per
block.

In the manner of mmpretrain's ``tools/visualization/vis_cam.py``: the
config's test pipeline without ``LoadAnnotations`` prepares the image, the
model's data preprocessor normalises (and pads) it, then only the backbone
runs (:func:`~.cluster_maps.cluster_maps`). With ``--arch`` alone no config
is needed: ``FEC(arch)`` on the image normalised with ImageNet's mean and
std. Everything is checked before anything is drawn (``--out-dir``
included: :func:`fec_mm.outputs.check_output_dir`), and the files are
written to a temporary folder beside ``--out-dir`` and renamed into it, so
a bad input writes nothing. Files an earlier run wrote for the same image
and this run does not (other stages, blocks, groups) are removed, and the
tool says what it replaced and removed.
"""
import argparse
import importlib
import json
import os
import os.path as osp
import re
import shutil
import sys
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
from mmengine.config import Config, DictAction

from ..models.checkpoint import load_fec_checkpoint, read_state_dict
from ..models.coc_checkpoint import check_family
from ..models.context_cluster import ContextCluster
from ..models.families import convert_authors_file
from ..models.fec import FEC
from ..outputs import check_output_dir
from .cluster_maps import MERGE_FEATURES, cluster_maps
from .contributions import linear_classifier_head
from .merge import MERGE_METHODS
from .views import ViewOptions, check_options

# Backbone types vis_clusters draws, and the --arch prefix of CoC presets.
BACKBONES = ('FEC', 'ContextCluster')
COC_PREFIX = 'coc-'
# FEC-only options and their defaults: given for a ContextCluster, an error.
FEC_ONLY = dict(groups=None, merge_feature='final', merge_method='kmeans', target_class=None,
                html=None)

# ImageNet's RGB mean and std (mmpretrain's data preprocessors), for --arch.
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def build_parser() -> argparse.ArgumentParser:
    """The arguments of ``tools/visualization/vis_clusters.py``."""
    parser = argparse.ArgumentParser(
        description='Cluster maps of an FEC model on one image: every pooling stage traced '
                    'to pixels, per-head maps, merged groups, class contributions; of a '
                    'Context Clusters model: every encoding block\'s per-head assignments')
    parser.add_argument('img', help='image file')
    parser.add_argument('config', nargs='?', help='config file (or, with --arch, the checkpoint)')
    parser.add_argument('checkpoint', nargs='?', help='checkpoint file (default: random weights)')
    parser.add_argument('--arch', help="FEC arch ('small', 'base', 'large') or ContextCluster "
                        "preset ('coc-tiny', 'coc-tiny_plain', 'coc-small', 'coc-medium'): "
                        'without a config, the backbone on the image normalised with ImageNet '
                        'mean/std; with a config (of the same family), replaces '
                        'model.backbone.arch')
    parser.add_argument('--stage', type=int, nargs='+', help='FEC: pooling stages to draw '
                        '(1 .. last); ContextCluster: stages whose blocks are drawn (0 .. last); '
                        'default all')
    parser.add_argument('--block', nargs='+', default=[], metavar='STAGE.BLOCK',
                        help='blocks whose mixer heads are drawn, e.g. 2.0 3.1')
    parser.add_argument('--head', type=int, nargs='+', help='heads of those blocks (default all)')
    parser.add_argument('--groups', type=int, help='merge the final clusters into K groups')
    parser.add_argument('--merge-feature', default='final', choices=MERGE_FEATURES,
                        help='feature the final clusters are merged by (default final)')
    parser.add_argument('--merge-method', default='kmeans', choices=MERGE_METHODS,
                        help='spherical k-means or Ward (default kmeans)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the merge and of random weights (default 0)')
    parser.add_argument('--target-class', type=int,
                        help='classifiers: class whose contributions are drawn (default top-1)')
    parser.add_argument('--alpha', type=float, default=0.5,
                        help='opacity of the cluster fills in [0, 1]; 0: boundaries only')
    parser.add_argument('--out-dir', default='vis_clusters', help='output folder')
    parser.add_argument('--device', default='cpu', help='device, e.g. cpu or cuda:0')
    parser.add_argument('--json', action='store_true',
                        help='also write the per-stage numbers as <image>_clusters.json')
    parser.add_argument('--html', metavar='OUT.html',
                        help='write the interactive cluster explorer (one self-contained HTML '
                        'file) to OUT.html instead of the PNG views; --block/--head choose '
                        'its mixer views (default all)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help="override config settings, e.g. model.backbone.num_centers=7 "
                        "(with --arch alone: model.backbone.* only)")
    return parser


def parse_block(text: str) -> Tuple[int, int]:
    """'2.1' -> (2, 1)."""
    parts = text.split('.')
    if len(parts) != 2 or not all(p.strip().lstrip('-').isdigit() for p in parts):
        raise ValueError(f'--block {text!r}: expected STAGE.BLOCK, e.g. 2.0')
    return int(parts[0]), int(parts[1])


def read_image(path: str) -> np.ndarray:
    """(H, W, 3) uint8 BGR, as mmcv's LoadImageFromFile reads it.

    Raises:
        FileNotFoundError: No such file.
        ValueError: The file is not a decodable image.
    """
    import mmcv
    if not osp.isfile(path):
        raise FileNotFoundError(f'image not found: {path}')
    if osp.getsize(path) == 0:
        raise ValueError(f'cannot read image {path}: the file is empty (0 bytes)')
    try:
        image = mmcv.imread(path, flag='color')
    except Exception as err:  # mmcv and its backends raise various types
        raise ValueError(f'cannot read image {path}: {err}') from err
    if image is None or image.size == 0:
        raise ValueError(f'cannot read image {path}: not an image file mmcv can decode')
    return image


def _backbone(model: nn.Module, where: str) -> nn.Module:
    backbone = getattr(model, 'backbone', model)
    if not isinstance(backbone, (FEC, ContextCluster)):
        raise ValueError(f'{where}: the backbone is {type(backbone).__name__}, not '
                         f'{" or ".join(BACKBONES)}; vis_clusters draws the cluster maps of '
                         'those backbones only')
    return backbone


def split_arch(arch: str) -> Tuple[str, str]:
    """``'coc-small'`` -> ('ContextCluster', 'small'); ``'small'`` -> ('FEC', 'small')."""
    if arch.startswith(COC_PREFIX):
        return 'ContextCluster', arch[len(COC_PREFIX):]
    return 'FEC', arch


def load_weights(model: nn.Module, backbone: nn.Module, checkpoint: str) -> None:
    """Whole-model checkpoints (``backbone.*`` keys) into ``model``, others
    (backbone only, the authors' layout) into the backbone. Weights of
    another arch or of the other family are refused by the backbone's
    loaders (:func:`fec_mm.models.checkpoint.check_weights_fit`,
    :meth:`ContextCluster._load_from_state_dict`)."""
    if '://' not in checkpoint and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint not found: {checkpoint}')
    state_dict, _, _ = convert_authors_file(read_state_dict(checkpoint))  # the authors' too
    whole = model is not backbone and any(k.startswith('backbone.') for k in state_dict)
    if isinstance(backbone, ContextCluster):  # the other family, refused naming the file
        check_family('ContextCluster', [k[len('backbone.'):] if whole else k for k in state_dict
                                        if k.startswith('backbone.') or not whole], checkpoint)
    if whole:
        model.load_state_dict(state_dict, strict=False)
    elif isinstance(backbone, ContextCluster):
        backbone.load_checkpoint(checkpoint)
    else:
        load_fec_checkpoint(backbone, checkpoint)


def _without_annotations(pipeline: Sequence[dict]) -> List[dict]:
    return [dict(t) for t in pipeline if 'LoadAnnotations' not in str(t.get('type', ''))]


class Prepared:
    """A model and one image, ready for :func:`cluster_maps`."""

    def __init__(self, model: nn.Module, backbone: nn.Module, inputs: torch.Tensor,
                 image_size: Tuple[int, int], display: np.ndarray,
                 class_names: Optional[Sequence[str]] = None) -> None:
        self.model = model
        self.backbone = backbone
        self.inputs = inputs
        self.image_size = image_size
        self.display = display
        self.class_names = class_names


def prepare_from_config(args: argparse.Namespace) -> Prepared:
    """Build the config's model and run its test pipeline on the image."""
    from mmengine.dataset import Compose, pseudo_collate
    from mmengine.registry import init_default_scope
    if not osp.isfile(args.config):
        raise FileNotFoundError(f'config not found: {args.config}')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    backbone_cfg = cfg.get('model', {}).get('backbone')
    if backbone_cfg is None or backbone_cfg.get('type') not in BACKBONES:
        kind = backbone_cfg.get('type') if backbone_cfg else 'missing'
        raise ValueError(f'{args.config}: model.backbone is {kind}, not '
                         f'{" or ".join(BACKBONES)}; vis_clusters draws the cluster maps of '
                         'those backbones only')
    if args.arch:
        family, arch = split_arch(args.arch)
        if family != backbone_cfg.get('type'):
            raise ValueError(f'--arch {args.arch} is a {family} arch, but {args.config} has a '
                             f"{backbone_cfg.get('type')} backbone (ContextCluster presets: "
                             f'{COC_PREFIX}<preset>; FEC: small, base, large)')
        cfg.model.backbone.arch = arch
    scope = cfg.get('default_scope', 'mmengine')
    init_default_scope(scope)
    registry = importlib.import_module(f'{scope}.registry')
    model_cfg = cfg.model.copy()
    if cfg.get('data_preprocessor') is not None:
        model_cfg.setdefault('data_preprocessor', cfg.data_preprocessor)
    model = registry.MODELS.build(model_cfg)
    backbone = _backbone(model, args.config)
    if args.checkpoint:
        load_weights(model, backbone, args.checkpoint)
    model.to(args.device).eval()
    dataloader = cfg.get('test_dataloader') or cfg.get('val_dataloader')
    if not dataloader or 'pipeline' not in dataloader.get('dataset', {}):
        raise ValueError(f'{args.config}: no test_dataloader.dataset.pipeline to prepare '
                         'the image with')
    pipeline = Compose([registry.TRANSFORMS.build(t)
                        for t in _without_annotations(dataloader.dataset.pipeline)])
    data = pipeline(dict(img_path=args.img))  # fec_mm.images names the file in errors
    with torch.no_grad():
        batch = model.data_preprocessor(pseudo_collate([data]), False)
    packed = data['inputs']
    display = packed.flip(0).permute(1, 2, 0).cpu().numpy().astype(np.uint8)  # BGR -> RGB
    metainfo = dataloader.dataset.get('metainfo') or cfg.get('metainfo') or {}
    classes = metainfo.get('classes')
    if classes is None:  # the dataset class's own (e.g. ImageNet's 1000 names)
        dataset_cls = registry.DATASETS.get(dataloader.dataset.get('type', ''))
        classes = getattr(dataset_cls, 'METAINFO', {}).get('classes')
    return Prepared(model, backbone, batch['inputs'], tuple(display.shape[:2]), display,
                    classes)


def prepare_from_arch(args: argparse.Namespace) -> Prepared:
    """``FEC(arch)`` or ``ContextCluster(preset)`` (and ``--cfg-options
    model.backbone.*``) on the image normalised with ImageNet's mean and std,
    at its own size."""
    from mmengine.registry import MODELS
    family, arch = split_arch(args.arch)
    cfg = Config(dict(model=dict(backbone=dict(type=family, arch=arch))))
    if args.cfg_options:
        others = [k for k in args.cfg_options if not k.startswith('model.backbone.')]
        if others:
            raise ValueError(f'--cfg-options {others}: with --arch alone only '
                             'model.backbone.* can be set')
        cfg.merge_from_dict(args.cfg_options)
    backbone = MODELS.build(cfg.model.backbone)
    if args.checkpoint:
        load_weights(backbone, backbone, args.checkpoint)
    backbone.to(args.device).eval()
    rgb = np.ascontiguousarray(read_image(args.img)[..., ::-1])
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    inputs = ((torch.from_numpy(rgb).permute(2, 0, 1).float() - mean) / std)[None]
    return Prepared(backbone, backbone, inputs.to(args.device), tuple(rgb.shape[:2]), rgb)


def view_options(args: argparse.Namespace, prepared: Prepared) -> ViewOptions:
    """The views asked for, checked against the backbone."""
    backbone = prepared.backbone
    fc = linear_classifier_head(prepared.model)
    if fc is not None and fc.in_features != backbone.arch['widths'][backbone.num_stages - 1]:
        fc = None  # --arch changed the backbone under the config's head: no contributions
    options = ViewOptions(stages=args.stage, blocks=[parse_block(b) for b in args.block],
                          heads=args.head, groups=args.groups, merge_feature=args.merge_feature,
                          merge_method=args.merge_method, alpha=args.alpha, seed=args.seed, fc=fc,
                          target_class=args.target_class, class_names=prepared.class_names)
    check_options(options, backbone.num_stages, backbone.arch['depths'], backbone.arch['heads'])
    return options


def own_outputs(stem: str) -> re.Pattern:
    """Names of the files vis_clusters writes for an image named ``stem``."""
    views = (r'stage\d+|block\d+\.\d+_head\d+_(grid|pixels)|merged_k\d+|'
             r'contribution_class\d+|sheet')
    return re.compile(rf'^{re.escape(stem)}_(({views})\.png|clusters\.json)$')


def _existing_parent(path: str) -> str:
    path = osp.abspath(path)
    while not osp.isdir(path):
        path = osp.dirname(path)
    return path


def run(argv: Optional[Sequence[str]] = None) -> List[str]:
    """Parse ``argv``, draw, write; returns the written files.

    Raises:
        FileNotFoundError, ValueError: Bad input, named; nothing is written.
    """
    from .render import move_files, save_png
    from .views import draw_cluster_sheet, render_views
    args = build_parser().parse_intermixed_args(argv)
    if args.config and args.arch and not args.config.endswith('.py'):
        if args.checkpoint:
            raise ValueError('with --arch give at most a checkpoint after the image, '
                             f'got {args.config} and {args.checkpoint}')
        args.config, args.checkpoint = None, args.config
    if not args.config and not args.arch:
        raise ValueError('give a CONFIG or --arch')
    if args.groups is not None and args.groups < 1:
        raise ValueError(f'--groups K must be >= 1, got {args.groups}')
    if not 0 <= args.alpha <= 1:
        raise ValueError(f'--alpha must be in [0, 1], got {args.alpha}')
    for b in args.block:
        parse_block(b)
    check_output_dir(args.out_dir, '--out-dir')
    read_image(args.img)
    if args.html:
        from .explorer import check_html_path
        check_html_path(args.html)
    torch.manual_seed(args.seed)  # random weights (no checkpoint) are repeatable
    prepared = prepare_from_config(args) if args.config else prepare_from_arch(args)
    if isinstance(prepared.backbone, ContextCluster):
        return run_coc(args, prepared)
    options = view_options(args, prepared)
    maps = cluster_maps(prepared.backbone, prepared.inputs, prepared.image_size)
    if args.html:
        from .explorer import write_explorer
        meta = dict(image=args.img, config=args.config, checkpoint=args.checkpoint,
                    arch=prepared.backbone.arch_name)
        return [write_explorer(args.html, prepared.display, maps, options, meta=meta,
                               title=f'FEC cluster explorer: {osp.basename(args.img)}')]
    views, report, layers = render_views(prepared.display, maps, options)
    sheet = draw_cluster_sheet(prepared.display, layers, report, options.alpha)
    report.update(image=args.img, config=args.config, checkpoint=args.checkpoint,
                  arch=prepared.backbone.arch_name)
    stem = osp.splitext(osp.basename(args.img))[0]
    tmp = tempfile.mkdtemp(prefix='.vis_clusters-', dir=_existing_parent(args.out_dir))
    try:
        files: Dict[str, np.ndarray] = {f'{stem}_{n}.png': v for n, v in views.items()}
        files[f'{stem}_sheet.png'] = sheet
        for name, image in files.items():
            save_png(osp.join(tmp, name), image)
        if args.json:
            with open(osp.join(tmp, f'{stem}_clusters.json'), 'w') as f:
                json.dump(report, f, indent=1)
        mine = own_outputs(stem)
        before = sorted(n for n in os.listdir(args.out_dir) if mine.match(n)) \
            if osp.isdir(args.out_dir) else []
        written = move_files(tmp, args.out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    new = {osp.basename(p) for p in written}
    replaced = [n for n in before if n in new]
    stale = [n for n in before if n not in new]
    for name in stale:
        os.remove(osp.join(args.out_dir, name))
    if replaced:
        sys.stderr.write(f'vis_clusters: replaced {len(replaced)} files of an earlier run in '
                         f'{args.out_dir}\n')
    if stale:
        sys.stderr.write(f'vis_clusters: removed {len(stale)} files of an earlier run in '
                         f'{args.out_dir} that this one does not write: {", ".join(stale)}\n')
    return written


def check_coc_options(args: argparse.Namespace, backbone: ContextCluster) -> List[Tuple[int, int]]:
    """Refuse FEC-only options and views a ContextCluster does not have;
    returns the (stage, block) pairs asked for (empty: all).

    Raises:
        ValueError: Names the option and what is supported.
    """
    for name, default in FEC_ONLY.items():
        if getattr(args, name) != default:
            option = '--' + name.replace('_', '-')
            raise ValueError(
                f'{option} is for FEC backbones only: for a ContextCluster vis_clusters draws '
                'the PNG sheets of each encoding block\'s per-head assignments (options '
                '--stage, --block, --head, --alpha, --json); the explorer (--html), merged '
                'groups and class contributions need FEC\'s cluster pooling')
    n, depths, heads = backbone.num_stages, backbone.arch['depths'], backbone.arch['heads']
    for k in args.stage or ():
        if not 0 <= k < n:
            raise ValueError(f'no stage {k}: the ContextCluster stages are 0..{n - 1}')
    blocks = [parse_block(b) for b in args.block]
    for s, j in blocks:
        if not 0 <= s < n:
            raise ValueError(f'no stage {s} for block {s}.{j}: stages are 0..{n - 1}')
        if not 0 <= j < depths[s]:
            raise ValueError(f'no block {s}.{j}: stage {s} has blocks 0..{depths[s] - 1}')
    if args.head and not blocks:
        raise ValueError('heads given without a block (--block STAGE.BLOCK)')
    for s, j in blocks:
        for h in args.head or ():
            if not 0 <= h < heads[s]:
                raise ValueError(f'no head {h} in block {s}.{j}: it has heads 0..{heads[s] - 1}')
    return blocks


def run_coc(args: argparse.Namespace, prepared: Prepared) -> List[str]:
    """A ContextCluster's cluster maps: one sheet per encoding block (its
    heads side by side, :func:`.coc_cluster_maps.save_coc_cluster_maps`),
    ``<image>_stage{k}_block{j}.png``, and with ``--json`` the per-block
    numbers. The input is zero-padded (bottom/right, after normalisation,
    as mmdet/mmseg pad) to the backbone's ``size_divisor`` and the maps are
    cropped back to the image."""
    import dataclasses

    import torch.nn.functional as F

    from .coc_cluster_maps import coc_cluster_maps, save_coc_cluster_maps
    from .render import move_files
    backbone = prepared.backbone
    blocks = check_coc_options(args, backbone)
    x = prepared.inputs
    d = backbone.size_divisor
    x = F.pad(x, (0, -x.shape[-1] % d, 0, -x.shape[-2] % d))
    h, w = prepared.image_size
    maps = []
    for b in coc_cluster_maps(backbone, x):
        s = 4 * 2**b.stage  # token stride: the tokens covering the image
        maps.append(dataclasses.replace(b, pixels=b.pixels[..., :h, :w],
                                        cos=b.cos[..., :-(-h // s), :-(-w // s)]))
    stem = osp.splitext(osp.basename(args.img))[0]
    tmp = tempfile.mkdtemp(prefix='.vis_clusters-', dir=_existing_parent(args.out_dir))
    try:
        save_coc_cluster_maps(maps, prepared.display, tmp, alpha=args.alpha,
                              stages=args.stage, only_blocks=blocks or None, heads=args.head,
                              prefix=f'{stem}_')
        if args.json:
            report = dict(image=args.img, config=args.config, checkpoint=args.checkpoint,
                          backbone='ContextCluster', arch=backbone.arch_name,
                          image_size=[h, w], padded_size=list(x.shape[-2:]),
                          blocks=coc_block_report(maps))
            with open(osp.join(tmp, f'{stem}_clusters.json'), 'w') as f:
                json.dump(report, f, indent=1)
        return move_files(tmp, args.out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def coc_block_report(maps: Sequence) -> List[dict]:
    """Per block: name, stage, block, regions, center grid, and per head the
    clusters present on the image and their mean cosine with their center."""
    out, counts = [], {}
    for b in maps:
        j = counts.get(b.stage, 0)
        counts[b.stage] = j + 1
        heads = [dict(head=i, clusters=int(b.pixels[0, i].unique().numel()),
                      mean_cos=float(b.cos[0, i].mean())) for i in range(b.pixels.shape[1])]
        out.append(dict(name=b.name, stage=b.stage, block=j, fold=b.fold,
                        center_grid=list(b.center_grid), heads=heads))
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The CLI: prints the written files, or the error (exit status 1)."""
    try:
        written = run(argv)
    except (FileNotFoundError, ValueError) as err:
        sys.stderr.write(f'vis_clusters: error: {err}\n')
        return 1
    sys.stdout.write('\n'.join(written) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
