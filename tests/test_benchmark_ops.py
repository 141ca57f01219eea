"""tools/analysis_tools/benchmark_ops.py: the op shapes it benchmarks are the
ones FEC-Small really calls, and a run prints a complete backbone table."""
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from fec_mm.models import FEC, cluster_encoder, cluster_pooling

SCRIPT = Path(__file__).parents[1] / 'tools' / 'analysis_tools' / 'benchmark_ops.py'
sys.path.insert(0, str(SCRIPT.parent))
import benchmark_ops  # noqa: E402


@pytest.mark.parametrize('setting', ['cls', 'det'])
def test_op_calls_are_the_backbones(setting, monkeypatch):
    calls = Counter()

    def recorder(name, fn):
        def record(points, values, centers, *args, **kwargs):
            R, N, d = points.shape
            calls[(name, (R, N, centers.shape[1], d))] += 1
            return fn(points, values, centers, *args, **kwargs)
        return record

    monkeypatch.setattr(cluster_encoder, 'cluster_encode',
                        recorder('cluster_encode', cluster_encoder.cluster_encode))
    monkeypatch.setattr(cluster_pooling, 'cluster_pool',
                        recorder('cluster_pool', cluster_pooling.cluster_pool))
    cfg = benchmark_ops.SETTINGS[setting]
    model = FEC('small', num_centers=cfg['num_centers'], folds=cfg['folds'])
    # a smaller detection image keeps the test fast; the script's derivation
    # is checked at the same size
    size = cfg['size'] if setting == 'cls' else (256, 384)
    monkeypatch.setitem(benchmark_ops.SETTINGS, setting, dict(cfg, size=size))
    with torch.no_grad():
        model(torch.zeros(1, 3, *size))
    expected = Counter()
    for op, shape, count in benchmark_ops.op_calls(setting):
        expected[(op, shape)] += count
    assert calls == expected


def test_backbone_table_runs():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), '--settings', 'cls', '--skip-ops', '--threads', '1',
         '--backbone-repeat', '1'], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    row = next(line for line in result.stdout.splitlines() if line.startswith('| cls |'))
    ref_t, ref_m, auto_t, auto_m, time_ratio, mem_ratio = [
        float(re.match(r'[\d.]+', cell.strip()).group()) for cell in row.strip('|').split('|')[2:]]
    assert min(ref_t, ref_m, auto_t, auto_m) > 0
    assert time_ratio == pytest.approx(auto_t / ref_t, abs=0.06)  # from unrounded figures
    assert mem_ratio == pytest.approx(auto_m / ref_m, abs=0.03)
