"""FLOPs and parameters of a model config, FEC's clustering ops counted.

Usage (mmdet's manner; any cls/det/seg config of this repo or the libraries):
    python tools/analysis_tools/get_flops.py configs/fec_maskrcnn.py --shape 800 1344
    python tools/analysis_tools/get_flops.py configs/fec_small_in1k.py --shape 224 \
        --cfg-options model.backbone.ops_impl=reference

Counts one (1, 3, H, W) image through ``model(inputs, mode='tensor')`` with
mmengine's ``FlopAnalyzer`` (what the libraries' own get_flops tools use; FEC's
ops are registered in it on ``import fec_mm``). One FLOP = one multiply-add.
"""
import argparse
import sys

from mmengine.analysis.print_helper import _format_size
from mmengine.config import Config, DictAction

import fec_mm  # noqa: F401  (FEC and its FLOP handles)
from fec_mm.analysis import config_flops


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='FLOPs and params of a model config')
    parser.add_argument('config', help='config file path')
    parser.add_argument('--shape', type=int, nargs='+', default=[224, 224],
                        help='input size: H W, or one side for a square (default 224)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, xxx=yyy (as the libraries\' tools)')
    args = parser.parse_args(argv)
    if len(args.shape) not in (1, 2) or min(args.shape) <= 0:
        parser.error(f'--shape takes one or two positive sizes, got {args.shape}')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    shape = tuple(args.shape) * (2 if len(args.shape) == 1 else 1)
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    count, padded = config_flops(cfg, shape)
    line = '=' * 30
    if padded != shape:
        print(f'{line}\nUse size divisor set input shape from {shape} to {padded}')
    print(f'{line}\nInput shape: (1, 3, {padded[0]}, {padded[1]})\n'
          f'Flops: {_format_size(count.flops)} ({count.flops})\n'
          f'  clustering ops: {_format_size(count.clustering)} ({count.clustering})\n'
          f'  rest: {_format_size(count.rest)} ({count.rest})\n'
          f'Params: {_format_size(count.params)} ({count.params})\n{line}')
    if count.unsupported:
        ops = ', '.join(sorted(count.unsupported))
        print(f'Not counted (element-wise or without a handle in mmengine): {ops}')


if __name__ == '__main__':
    sys.exit(main())
