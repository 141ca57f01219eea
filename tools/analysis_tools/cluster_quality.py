"""Score FEC's final clusters (or a CoC block's) as segments against exact ground truth.

Usage:
    python tools/analysis_tools/cluster_quality.py CONFIG [--checkpoint CKPT] \
        [--ks 4 8 16 32] [--seeds 0 1 2] [--num-images N] [--coc-stage K] [--out result.json]

CONFIG is an mmdet or mmseg config with an FEC or ContextCluster backbone (e.g.
configs/demo/fec_maskrcnn_demo.py, configs/demo/coc_maskrcnn_demo.py; for CoC the
partition is head 0 of the last block of stage --coc-stage, default the last); its
test split is scored, SLIC's compactness is chosen on images of its train split.
Writes a JSON (means, bootstrap 95 % intervals, per-image scores) and prints a
markdown table.
See docs/user_guides/analysis.md, "Cluster quality" and fec_mm/analysis/cluster_quality.py.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
from typing import List, Optional

from mmengine.config import Config, DictAction

from fec_mm.analysis.cluster_quality import (
    DEFAULT_COMPACTNESS,
    DEFAULT_KS,
    DEFAULT_SEEDS,
    evaluate_partitions,
    markdown_table,
)
from fec_mm.outputs import OutputPathError, check_output_file, default_file_mode
from fec_mm.visualization.merge import MERGE_METHODS


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='mmdet/mmseg config with an FEC or ContextCluster backbone')
    parser.add_argument('--checkpoint', default=None,
                        help='trained checkpoint (its backbone is scored as "FEC (trained)")')
    parser.add_argument('--ks', type=int, nargs='+', default=list(DEFAULT_KS),
                        help='numbers of segments to merge to (default 4 8 16 32)')
    parser.add_argument('--seeds', type=int, nargs='+', default=list(DEFAULT_SEEDS),
                        help='seeds of the randomly initialised backbones (default 0 1 2)')
    parser.add_argument('--num-images', type=int, default=None,
                        help='score the first N test images (default: all)')
    parser.add_argument('--num-heldout', type=int, default=8,
                        help='train images on which SLIC compactness is chosen (default 8)')
    parser.add_argument('--compactness', type=float, nargs='+',
                        default=list(DEFAULT_COMPACTNESS), help='SLIC compactness candidates')
    parser.add_argument('--merge', choices=MERGE_METHODS, default='kmeans',
                        help='how final clusters are merged to K (default kmeans)')
    parser.add_argument('--coc-stage', type=int, default=None,
                        help='ContextCluster configs: the stage whose last block\'s head-0 '
                        'assignments are the partition (default the last stage)')
    parser.add_argument('--bootstrap', type=int, default=1000, help='bootstrap resamples')
    parser.add_argument('--seed', type=int, default=0, help='seed of the bootstrap')
    parser.add_argument('--out', default=None,
                        help='output JSON (default work_dirs/cluster_quality/<config>.json)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config entries, e.g. test_dataloader.dataset.data_root=X')
    args = parser.parse_args(argv)
    if not osp.isfile(args.config):
        parser.error(f'config file not found: {args.config}')
    if args.checkpoint is not None and '://' not in args.checkpoint \
            and not osp.isfile(args.checkpoint):
        parser.error(f'checkpoint file not found: {args.checkpoint}')
    if any(k < 1 for k in args.ks):
        parser.error(f'--ks must all be >= 1, got {args.ks}')
    for name in ('num_images', 'num_heldout', 'bootstrap'):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f'--{name.replace("_", "-")} must be >= 1, got {value}')
    if any(c <= 0 for c in args.compactness):
        parser.error(f'--compactness values must be > 0, got {args.compactness}')
    return args


def write_json_atomic(result: dict, path: str) -> None:
    """Write aside in the target folder, then rename: no partial file."""
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix='.cluster_quality.', suffix='.tmp')
    try:
        with os.fdopen(fd, 'w') as f:
            json.dump(result, f, indent=1)
        os.chmod(tmp, default_file_mode())  # mkstemp's file is 0600
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def main(argv: Optional[List[str]] = None) -> dict:
    args = parse_args(argv)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    out = args.out or osp.join('work_dirs', 'cluster_quality',
                               osp.splitext(osp.basename(args.config))[0] + '.json')
    try:  # before the minutes of work
        replacing = check_output_file(out, '--out')
    except OutputPathError as e:
        sys.exit(f'cluster_quality: {e}')
    try:
        result = evaluate_partitions(
            cfg, args.checkpoint, ks=args.ks, seeds=args.seeds, num_images=args.num_images,
            num_heldout=args.num_heldout, compactness=args.compactness,
            merge_method=args.merge, bootstrap=args.bootstrap, seed=args.seed,
            coc_stage=args.coc_stage)
    except (ValueError, FileNotFoundError) as e:  # bad checkpoint, data or config entries
        sys.exit(f'cluster_quality: {e}')
    result['config'] = args.config
    result['command'] = 'python tools/analysis_tools/cluster_quality.py ' + ' '.join(
        argv if argv is not None else sys.argv[1:])
    write_json_atomic(result, out)
    print(markdown_table(result))
    print(f'\n{result["num_images"]} images, SLIC compactness {result["slic"]["compactness"]}; '
          f'written {out}' + (' (replaced the existing file)' if replacing else ''))
    return result


if __name__ == '__main__':
    main()
