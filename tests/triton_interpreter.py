"""Re-running Triton tests on CPU under Triton's interpreter.

``TRITON_INTERPRET=1`` must be set before Triton is imported, so a test module
that wants its Triton tests run on a machine without a GPU re-runs the chosen
tests in a fresh pytest process with it set (no other module is affected).
"""
import os
import subprocess
import sys


def rerun_under_interpreter(test_file: str, selection: str) -> str:
    """Run ``pytest test_file -k selection`` with ``TRITON_INTERPRET=1`` on CPU;
    assert it succeeded and return its summary line (e.g. '3 passed in 2s')."""
    env = dict(os.environ, TRITON_INTERPRET='1', CUDA_VISIBLE_DEVICES='')
    result = subprocess.run(
        [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', test_file,
         '-k', selection],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]
