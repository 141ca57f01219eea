"""tools/analysis_tools/benchmark_speedup.py without timing anything: its
arguments, the source tree it exports and the table it prints."""
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / 'tools' / 'analysis_tools' / 'benchmark_speedup.py'
spec = importlib.util.spec_from_file_location('benchmark_speedup', SCRIPT)
bs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bs)


def test_before_is_required():
    with pytest.raises(SystemExit):
        bs.parse_args([])
    assert bs.parse_args(['--before', 'HEAD']).sizes == ['224', '512']


def test_export_tree_of_a_ref(tmp_path):
    tree = bs.export_tree('HEAD', tmp_path / 'tree')
    assert (tree / 'fec_mm' / 'models' / 'fec.py').is_file()
    assert bs.export_tree(str(tmp_path), tmp_path / 'unused') == tmp_path.resolve()


def test_table_ratios_and_shares():
    rows = [dict(size='224', model='FEC-Small', mode='infer', gflops=1.0, before=0.1, after=0.05),
            dict(size='224', model='ResNet-18', mode='infer', gflops=2.0, before=None,
                 after=0.04)]
    lines = bs.table(rows, rate=40.0)
    fec, resnet = lines[2], lines[3]
    # 1 GFLOP in 0.1 s = 10 GFLOP/s = 25 % of 40; 0.05 s: 20 (50 %); 0.05 / 0.04 = 1.25
    assert '| 100.0 | 50.0 | 0.50 | 10.0 (25 %) | 20.0 (50 %) | 1.25 |' in fec
    assert '| – | 40.0 | – | – | 50.0 (125 %) | 1.00 |' in resnet
