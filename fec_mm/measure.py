"""Peak memory and time of one training or inference step, for the benchmarks.

Shared by ``tools/analysis_tools/benchmark_ops.py`` (which also runs on a bare
GPU machine, so this module needs torch alone) and ``benchmark_backbones.py``.
On CPU the peak is the resident-set high-water mark after resetting it through
``/proc/self/clear_refs`` (tracemalloc does not see torch's allocator); where
that file cannot be written, the growth of ``ru_maxrss``, which cannot be
reset. On CUDA it is ``torch.cuda.max_memory_allocated``.
"""
import platform
import resource
import statistics
import time
from typing import Callable, Dict, List

import torch


def _rss_mb(field: str) -> float:
    """A memory field of /proc/self/status, in MiB."""
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f'{field} not in /proc/self/status')


class PeakMemory:
    """Peak memory of a block of code beyond what was in use before it, in MiB."""

    def __init__(self, device: str) -> None:
        self.device = device

    def __enter__(self):
        if self.device == 'cuda':
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.before = torch.cuda.memory_allocated() / 2**20
            return self
        self.before = _rss_mb('VmRSS')
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')
            self.reset = True
        except OSError:
            self.reset = False
            self.maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return self

    def __exit__(self, *exc) -> None:
        if self.device == 'cuda':
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() / 2**20 - self.before
        elif self.reset:
            self.peak = _rss_mb('VmHWM') - self.before
        else:
            maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            self.peak = max(maxrss, self.before) - max(self.maxrss_before, self.before)


def measure_step(step, warmup, device: str, what: str, repeat: int,
             min_time: float = 1.0) -> Dict[str, float]:
    """Peak memory of one ``step`` (``what='memory'``: ``peak_mb``) or its
    fastest and median time (``'time'``: ``time_s``, ``median_s``) over at least
    ``repeat`` runs and ``min_time`` seconds, after ``warmup()`` and one step."""
    warmup()  # small shapes: loads the extension, starts threads, compiles kernels
    if what == 'memory':
        with PeakMemory(device) as mem:
            step()
        return dict(peak_mb=mem.peak)
    step()
    times: List[float] = []
    while len(times) < repeat or (sum(times) < min_time and len(times) < 50):
        if device == 'cuda':
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device == 'cuda':
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return dict(time_s=min(times), median_s=statistics.median(times))


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one), for benchmark headers."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def best_time(fn: Callable[[], object], repeat: int, warmup: int = 1) -> float:
    """Fastest wall time of ``fn()`` in seconds over ``repeat`` runs, after
    ``warmup`` untimed calls (CPU timings: no device synchronisation)."""
    for _ in range(warmup):
        fn()
    times: List[float] = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
