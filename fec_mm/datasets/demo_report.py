"""Summary of a demo training run, read from mmengine's scalar log.

    python -m fec_mm.datasets.demo_report work_dirs/fec_maskrcnn_demo

prints the first and last logged training loss and the final validation
metrics, and exits with status 1 if the loss did not fall or a required
metric is not above 0 (the demo's own check; see docs/get_started.md, "First run: the demo").
"""
import argparse
import glob
import json
import os.path as osp
import sys
from typing import Dict, List, Optional, Sequence


def read_scalars(work_dir: str) -> List[dict]:
    """The records of the latest run's ``<timestamp>/vis_data/scalars.json``.

    Raises:
        FileNotFoundError: No run with a scalar log in ``work_dir``.
    """
    paths = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not paths:
        raise FileNotFoundError(f'no */vis_data/scalars.json under {work_dir}: '
                                'has a training run been logged there?')
    with open(paths[-1]) as f:
        return [json.loads(line) for line in f if line.strip()]


# Scalars that hooks log beside the validation metrics (ClusterMapHook's
# per-stage numbers, fec_mm/visualization/cluster_map_hook.py): not metrics.
NON_METRIC_PREFIXES = ('cluster_maps/',)


def validation_metrics(records: List[dict]) -> Dict[str, float]:
    """The metrics of the last validation in a scalar log.

    Validation records are those without a training loss or lr. Hooks may
    log other scalars at validation time, in records of their own before or
    after the metrics' record (:data:`NON_METRIC_PREFIXES`): their keys are
    left out, and records left with no metric are skipped.
    """
    for record in reversed(records):
        if 'loss' in record or 'lr' in record:
            continue
        metrics = {k: v for k, v in record.items()
                   if k != 'step' and not k.startswith(NON_METRIC_PREFIXES)}
        if metrics:
            return metrics
    return {}


def summarize_run(work_dir: str) -> Dict[str, float]:
    """First and last logged training loss and the last validation metrics.

    Args:
        work_dir (str): The ``--work-dir`` of the training run.

    Returns:
        dict: ``loss_first``, ``loss_last`` (means over a logging window),
        ``iters`` (last logged iteration) and every metric of the last
        validation (e.g. ``coco/bbox_mAP``).
    """
    records = read_scalars(work_dir)
    train = [r for r in records if 'loss' in r]
    if not train:
        raise ValueError(f'{work_dir}: the scalar log holds no training loss')
    summary = dict(loss_first=train[0]['loss'], loss_last=train[-1]['loss'],
                   iter_first=train[0].get('iter', train[0].get('step')),
                   iter_last=train[-1].get('iter', train[-1].get('step')))
    summary.update(validation_metrics(records))
    return summary


def check_run(summary: Dict[str, float], required: Sequence[str]) -> List[str]:
    """What is wrong with a run: loss not falling, metrics missing or 0."""
    problems = []
    if not summary['loss_last'] < summary['loss_first']:
        problems.append(f'the loss did not fall ({summary["loss_first"]:.4f} -> '
                        f'{summary["loss_last"]:.4f})')
    for key in required:
        if key not in summary:
            problems.append(f'{key} missing from the validation results')
        elif not summary[key] > 0:
            problems.append(f'{key} is {summary[key]}, not above 0')
    return problems


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(description='Summary of a demo training run')
    parser.add_argument('work_dir')
    parser.add_argument('--require', nargs='*', default=['coco/bbox_mAP', 'coco/segm_mAP'],
                        help='metrics that must be above 0')
    args = parser.parse_args(argv)
    summary = summarize_run(args.work_dir)
    lines = [f'training loss (logged window means): {summary["loss_first"]:.4f} at '
             f'iteration {summary["iter_first"]} -> {summary["loss_last"]:.4f} at '
             f'iteration {summary["iter_last"]}']
    lines += [f'{k}: {v}' for k, v in summary.items()
              if k not in ('loss_first', 'loss_last', 'iter_first', 'iter_last')]
    problems = check_run(summary, args.require)
    lines.append('demo check: ' + ('FAILED: ' + '; '.join(problems) if problems else
                                   'loss fell and ' + ', '.join(args.require) + ' > 0'))
    sys.stdout.write('\n'.join(lines) + '\n')
    sys.exit(1 if problems else 0)


if __name__ == '__main__':
    main()
