"""tools/analysis_tools/gpu_check.sh and fec_mm.gpu_checks without a GPU:
syntax, argument parsing, the dry run, the report of a machine without CUDA,
and the triton-vs-reference comparison run on CPU ops (the GPU figures come
from running the script where a GPU is lent)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fec_mm import gpu_checks

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / 'tools/analysis_tools/gpu_check.sh'


def run_script(*args, cwd=None, **env):
    return subprocess.run(['bash', str(SCRIPT), *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120, env=dict(os.environ, **env))


def test_script_syntax():
    result = subprocess.run(['bash', '-n', str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_help_lists_the_options():
    result = run_script('--help')
    assert result.returncode == 0
    for option in ('--out FILE', '--wheels DIR', '--python PY', '--budget SECONDS',
                   '--dry-run'):
        assert option in result.stdout


@pytest.mark.parametrize('args,message', [
    (['--bogus'], "unknown option '--bogus'"),
    (['--out'], '--out needs a value'),
    (['--budget', 'ten'], "--budget must be a whole number of seconds, got 'ten'"),
    (['--budget', '0'], '--budget must be positive'),
    (['--wheels', '/nonexistent/wheels'], '--wheels: no such folder: /nonexistent/wheels'),
    (['--out', '/nonexistent/dir/report.md'], '--out: the folder /nonexistent/dir does not'),
])
def test_bad_arguments_fail_clearly(args, message):
    result = run_script(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr and 'see gpu_check.sh --help' in result.stderr


def test_dry_run_prints_every_step_and_runs_nothing(tmp_path):
    result = run_script('--dry-run', '--budget', '300', cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith('[dry-run] ')]
    commands = '\n'.join(lines)
    assert 'pytest -v -p no:cacheprovider tests/test_ops_triton.py' in commands
    assert 'fec_mm.gpu_checks backbone --models FEC-Small CoC-Small --sizes 224 512' in commands
    assert '--dtypes float32 float16 bfloat16' in commands
    assert 'fec_mm.gpu_checks amp-maskrcnn --config configs/fec_maskrcnn.py' in commands
    assert 'benchmark_ops.py --device cuda' in commands
    assert 'benchmark_backbones.py --device cuda --models FEC-Small FEC-Base' in commands
    assert '800x1344' in commands
    assert 'budget 300 s' in lines[-1]
    assert list(tmp_path.iterdir()) == []  # no report in a dry run


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has CUDA')
def test_without_cuda_the_report_says_so_and_the_run_fails(tmp_path):
    out = tmp_path / 'report.md'
    result = run_script('--out', str(out), PYTHON=sys.executable)
    assert result.returncode == 1, result.stdout + result.stderr
    assert 'no CUDA device' in result.stderr
    text = out.read_text()
    assert text.startswith('# fec-mm GPU check, ')
    assert f'torch {torch.__version__}' in text
    assert 'GPU: none' in text and '**No CUDA device**: nothing was checked.' in text


def test_gpu_checks_cli_parses_and_skips_without_cuda(capsys):
    with pytest.raises(SystemExit):
        gpu_checks.main(['backbone', '--models', 'ResNet-18'])
    assert "invalid choice: 'ResNet-18'" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert gpu_checks.main(['amp-maskrcnn']) == gpu_checks.EXIT_SKIPPED
        assert gpu_checks.main(['backbone', '--models', 'FEC-Small', '--sizes', '224',
                                '--dtypes', 'float32']) == gpu_checks.EXIT_SKIPPED
        assert 'skipped: no CUDA device' in capsys.readouterr().out


def test_backbone_parity_compares_outputs_and_gradients(monkeypatch):
    """The comparison the GPU check makes, run on the CPU ops: equal models
    pass; a model whose weights differ slightly fails on its gradients or
    outputs."""
    r = gpu_checks.backbone_parity('FEC-Small', 224, 'float32', device='cpu', impl='cpu')
    assert r['passed'] and r['output_error'] < 1e-5 and r['grad_error'] < 1e-4, r
    build = gpu_checks.build_backbone

    def perturbed(name, size, ops_impl):
        model = build(name, size, ops_impl)
        if ops_impl != 'reference':
            with torch.no_grad():
                w = model.patch_embed.proj.weight
                w.add_(1e-3 * torch.randn(w.shape, generator=torch.Generator().manual_seed(0)))
        return model

    monkeypatch.setattr(gpu_checks, 'build_backbone', perturbed)
    r = gpu_checks.backbone_parity('FEC-Small', 224, 'float32', device='cpu', impl='cpu')
    out_tol, grad_tol = gpu_checks.TOLERANCES['float32']
    assert not r['passed'] and (r['output_error'] > out_tol or r['grad_error'] > grad_tol), r


def test_detector_train_step_on_random_data():
    """The AMP step's data and training step, run here in float32 on CPU
    (mmengine's AMP wrapper needs a GPU) with the small demo detector."""
    pytest.importorskip('mmdet', reason='mmdet is not installed')
    r = gpu_checks.amp_train_step(str(REPO / 'configs/demo/fec_maskrcnn_demo.py'), (128, 160),
                                  steps=1, device='cpu', amp=False)
    assert r['passed'] and r['finite'] and r['loss'] > 0, r
