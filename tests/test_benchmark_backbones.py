"""tools/analysis_tools/benchmark_backbones.py runs end to end at a tiny
setting and writes a complete table, its JSON and the sweep plot (not a timed
test: only that every figure is there and finite)."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'tools' / 'analysis_tools' / 'benchmark_backbones.py'


def test_benchmark_runs_end_to_end(tmp_path):
    models = ['FEC-Small', 'ResNet-50']
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run(
        [sys.executable, str(SCRIPT), '--models', *models, '--sizes', '64x96', '--sweep', '64',
         '96', '--repeat', '1', '--min-time', '0', '--threads', '1', '--out', str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    assert 'failed' not in out.stderr and 'no result' not in out.stderr, out.stderr[-3000:]

    data = json.loads((tmp_path / 'backbones.json').read_text())
    assert data['matmul_gflops_per_s'] > 0
    rows = data['results']['64x96']
    assert list(rows) == models
    for row in rows.values():
        for key in ('params_m', 'gflops', 'infer_s', 'train_s', 'infer_mb', 'train_mb'):
            assert math.isfinite(row[key]) and row[key] >= 0, (key, row)
        assert row['gflops'] > 0 and row['infer_s'] > 0 and row['train_s'] > 0
    # The sweep holds every model (and FEC-Small without folds) at both sides.
    assert set(data['sweep']) == {*models, 'FEC-Small nofold'}
    for by_side in data['sweep'].values():
        assert set(by_side) == {'64', '96'}
        assert all(r['infer_s'] > 0 and r['gflops'] > 0 for r in by_side.values())
    # FLOPs grow with the pixel count: 96² has 2.25 times the pixels of 64².
    fec = data['sweep']['FEC-Small']
    assert fec['96']['gflops'] > 2 * fec['64']['gflops']

    table = (tmp_path / 'backbones.md').read_text()
    lines = [line for line in table.splitlines() if line.startswith('| 64×96 |')]
    assert [line.split('|')[2].strip() for line in lines] == models
    assert all('–' not in line for line in lines)
    baseline = next(line for line in lines if '| ResNet-50 |' in line)
    assert baseline.split('|')[7].strip() == '1.00'  # infer time / ResNet-50
    png = (tmp_path / 'backbone_time_vs_side.png').read_bytes()
    assert png[:8] == b'\x89PNG\r\n\x1a\n'


def test_benchmark_rejects_bad_size():
    out = subprocess.run([sys.executable, str(SCRIPT), '--sizes', '64by96'],
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "'64by96' is not" in out.stderr


def test_context_cluster_rows_build():
    """The CoC-Tiny/Small rows build at the authors' settings and run a small input
    (the timed benchmark itself is not run here)."""
    import importlib.util

    import torch
    spec = importlib.util.spec_from_file_location('benchmark_backbones', SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert {'CoC-Tiny', 'CoC-Small'} <= set(bench.DEFAULT_MODELS)
    for name, arch in (('CoC-Tiny', 'tiny'), ('CoC-Small', 'small')):
        cls = bench.build(name, (224, 224), sweep=False)
        assert (cls.arch_name, cls.num_centers, cls.folds) == (arch, (2,) * 4, (8, 4, 2, 1))
        dense = bench.build(name, (64, 96), sweep=True)
        assert dense.num_centers == (5,) * 4
        with torch.no_grad():
            outs = dense.eval()(torch.randn(1, 3, 64, 96))
        assert [o.shape[-2:] for o in outs] == [(16, 24), (8, 12), (4, 6), (2, 3)]
