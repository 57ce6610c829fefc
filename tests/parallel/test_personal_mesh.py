"""Issue 10's algorithms sharded over devices give the numbers of one device.

Ditto (client table, Dropout), HypCluster (stacked per-cluster updates,
per-client reports) and agnostic FedAvg (per-domain sums) run in fresh
interpreters with 1 and 2 forced CPU devices; final states and reports must
agree to 1e-5, and nothing may compile after round 2.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

# Every test here starts processes: the slow tier (make test-all).
pytestmark = pytest.mark.slow

# The workers and shared references live in tests/, one folder up.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = ("ditto", "hypcluster", "agnostic")


def _start(tmp_path, devices):
    out = str(tmp_path / f"{devices}.npz")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE)])}
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, os.path.join(HERE, "personal_mesh_worker.py"), out, str(devices)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, out


def _finish(started):
    proc, out = started
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    return dict(np.load(out))


def test_two_devices_equal_one_device(tmp_path):
    one, two = _start(tmp_path, 1), _start(tmp_path, 2)
    one, two = _finish(one), _finish(two)
    for name in ALGORITHMS:
        assert int(one[f"{name}/devices"]) == 1 and int(two[f"{name}/devices"]) == 2
        leaves = sorted(k for k in one if k.startswith(f"{name}/leaf"))
        assert leaves == sorted(k for k in two if k.startswith(f"{name}/leaf"))
        for key in leaves:
            np.testing.assert_allclose(two[key], one[key], rtol=1e-5, atol=1e-5, err_msg=key)
        for result in (one, two):
            counts = result[f"{name}/compiles"]
            assert counts[1] == counts[-1], f"{name} compiled after round 2: {counts}"
