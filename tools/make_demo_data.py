"""Generate the demo datasets (COCO instances, ADE20K and ImageNet formats).

    python tools/make_demo_data.py --out data/demo

writes data/demo/coco, data/demo/ade/ADEChallengeData2016 and
data/demo/imagenet; a second run with the same settings does nothing.
See docs/user_guides/dataset_prepare.md.
"""
import argparse

from fec_mm.datasets.demo_data import TASKS, make_demo_data


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='data/demo', help='output folder (default data/demo)')
    parser.add_argument('--tasks', nargs='+', choices=TASKS, default=list(TASKS),
                        help='datasets to write (default: all)')
    parser.add_argument('--num-train', type=int, default=None,
                        help='training images per dataset (default: per dataset)')
    parser.add_argument('--num-val', type=int, default=None,
                        help='validation images per dataset (default: per dataset)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the drawings')
    parser.add_argument('--force', action='store_true',
                        help='rewrite demo data even when it is up to date')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    make_demo_data(args.out, args.tasks, args.num_train, args.num_val, args.seed, args.force)


if __name__ == '__main__':
    main()
