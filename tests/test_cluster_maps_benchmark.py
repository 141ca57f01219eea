"""tools/analysis_tools/benchmark_vis_clusters.py prints a complete table."""
import sys
from pathlib import Path

import pytest
from demo_config_helpers import one_torch_thread  # noqa: F401  (autouse fixture)

SCRIPT = Path(__file__).parents[1] / 'tools' / 'analysis_tools' / 'benchmark_vis_clusters.py'
sys.path.insert(0, str(SCRIPT.parent))
import benchmark_vis_clusters  # noqa: E402


def test_a_run_prints_every_phase(capsys):
    benchmark_vis_clusters.main(['--settings', 'det', '--repeat', '1'])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith('FEC-Small, 512x512 astronaut') and 'load average' in lines[0]
    header = [c.strip() for c in lines[2].strip('|').split('|')]
    assert header == ['setting', 'plain forward', 'maps', 'numbers', 'views', 'sheet', 'png',
                      'sum of phases', 'whole: wall', 'whole: CPU']
    row = [c.strip() for c in lines[4].strip('|').split('|')]
    assert row[0].startswith('det (centers (7, 7, 7, 7), folds (2, 2, 1, 1))')
    values = [float(v) for v in row[1:]]
    assert all(v > 0 for v in values)
    assert values[6] == pytest.approx(sum(values[1:6]), abs=3e-3)  # printed to 1 ms
