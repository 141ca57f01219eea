"""Eager vs ``torch.compile`` (Inductor) inference time of the FEC backbone.

Usage:
    python tools/analysis_tools/benchmark_compile.py [--arch small] [--size 224]
        [--batch 1] [--repeat 10]

Prints the fastest eager and compiled forward times (no_grad, eval mode),
the time of the first compiled call (the compilation) and whether the
outputs agree. See docs/user_guides/library_tools.md ("torch.compile").
"""
import argparse
import time
from typing import List, Optional

import torch

from fec_mm.measure import best_time
from fec_mm.models import FEC


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--arch', default='small', help='FEC arch (default small)')
    parser.add_argument('--size', type=int, default=224, help='image side (default 224)')
    parser.add_argument('--batch', type=int, default=1, help='batch size (default 1)')
    parser.add_argument('--repeat', type=int, default=10, help='timed runs (fastest kept)')
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = FEC(args.arch).eval()
    x = torch.randn(args.batch, 3, args.size, args.size)
    with torch.no_grad():
        eager = best_time(lambda: model(x), repeat=args.repeat, warmup=2)
        compiled = torch.compile(model)
        start = time.perf_counter()
        compiled(x)
        compile_s = time.perf_counter() - start
        fast = best_time(lambda: compiled(x), repeat=args.repeat, warmup=2)
        agree = all(torch.allclose(a, b, rtol=1e-3, atol=1e-4)
                    for a, b in zip(model(x), compiled(x)))
    print(f'FEC-{args.arch} {args.size}x{args.size} batch {args.batch}, '
          f'{torch.get_num_threads()} thread(s): eager {eager:.3f} s, compiled {fast:.3f} s '
          f'(first call, with the compilation, {compile_s:.0f} s); outputs agree: {agree}')


if __name__ == '__main__':
    main()
