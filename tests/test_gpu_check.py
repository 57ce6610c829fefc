"""benchmarks/gpu_check.py on this machine's backend: every check passes (tiny shapes on a CPU)."""

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
CHECKS = ("executors", "auto", "sweep", "no recompilation", "to_keras")


@pytest.mark.slow
def test_gpu_check_passes_on_this_backend():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=600, check=False
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith(("PASS", "FAIL"))]
    assert [line.split(":")[0].split(" ", 1)[1] for line in lines] == list(CHECKS), proc.stdout
    assert all(line.startswith("PASS") for line in lines), proc.stdout
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
