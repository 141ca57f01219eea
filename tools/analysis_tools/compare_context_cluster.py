"""Compare fec-mm's ContextCluster with the authors' ``models/context_cluster.py``.

Runs the authors' file (github.com/ma-xu/Context-Cluster; fetch it and pass
the repository or the file) with seeded non-trivial random weights, loads the
same weights into ours through the converter, and prints the largest
difference of every output, for our reference and fused ops paths:

    python tools/analysis_tools/compare_context_cluster.py --source PATH/Context-Cluster

``--record FILE`` also saves a small record of the authors' outputs (what
tests/data/coc_reference_outputs.pt holds, so the test runs without their
code). See fec_mm/analysis/coc_reference.py for what is shimmed (timm only).
"""
import argparse
import subprocess
from typing import Optional, Sequence

import torch

from fec_mm.analysis import coc_reference as cr

DEFAULT_CASES = ('cls_tiny_224', 'cls_tiny_plain_224', 'cls_small_224', 'cls_medium_224',
                 'det_small_feat5_480x640', 'seg_small_feat7_512')
RECORDED_CASES = ('cls_tiny_224', 'det_small_feat5_256x320')


def _commit(source: str) -> str:
    result = subprocess.run(['git', f'--git-dir={source}', 'rev-parse', '--short', 'HEAD'],
                            capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else 'unknown'


def compare(source: str, cases: Sequence[str], impls: Sequence[str] = ('reference', 'cpu'),
            tol: float = 1e-5) -> list:
    """Rows (case, impl, max relative difference, ok) for ``cases``."""
    module = cr.load_authors_module(source)
    rows = []
    for name in cases:
        case = cr.CASES[name]
        x, weights = cr.case_inputs(case)
        theirs = cr.authors_forward(module, case, x, weights)
        for impl in impls:
            ours = cr.ours_forward(cr.build_ours(case['arch'], case['num_centers'],
                                                 case['dense'], impl), weights, x, case['dense'])
            diff = cr.max_difference(ours, theirs)
            rows.append((name, impl, diff, diff <= tol))
    return rows


def record(source: str, path: str, cases: Sequence[str] = RECORDED_CASES) -> None:
    """Save probes of the authors' outputs for ``cases`` to ``path``."""
    module = cr.load_authors_module(source)
    data = {'source_commit': _commit(source), 'cases': {}}
    for name in cases:
        case = cr.CASES[name]
        x, weights = cr.case_inputs(case)
        data['cases'][name] = dict(case, probes=cr.probe(
            cr.authors_forward(module, case, x, weights)))
    torch.save(data, path)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--source', required=True,
                        help='the authors\' repository (work tree or bare git dir) or '
                             'their models/context_cluster.py')
    parser.add_argument('--cases', nargs='+', default=list(DEFAULT_CASES),
                        choices=sorted(cr.CASES))
    parser.add_argument('--tol', type=float, default=1e-5,
                        help='largest accepted |ours - theirs| / max|theirs|')
    parser.add_argument('--record', help='also save a record of their outputs here')
    args = parser.parse_args(argv)
    rows = compare(args.source, args.cases, tol=args.tol)
    print(f'authors\' code: {args.source} (commit {_commit(args.source)})')
    print(f'{"case":28s} {"ops_impl":10s} {"max rel diff":>12s}  ok')
    for name, impl, diff, ok in rows:
        print(f'{name:28s} {impl:10s} {diff:12.2e}  {"yes" if ok else "NO"}')
    if args.record:
        record(args.source, args.record)
        print(f'recorded {RECORDED_CASES} to {args.record}')
    return 0 if all(r[3] for r in rows) else 1


if __name__ == '__main__':
    raise SystemExit(main())
