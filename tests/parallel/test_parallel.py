"""Clients sharded over devices and processes give the numbers of one device.

Every setting runs in a fresh interpreter (the device count is fixed when JAX
starts): 1, 2 and 4 forced CPU devices in one process, and 2 processes on
loopback joined by `fedjax_keras.parallel.initialize`. FedAvg (with Dropout),
SCAFFOLD (client table) and FedBN (per-client BatchNorm statistics) must
agree to 1e-5, and compile nothing after round 2.
"""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

# Every test here starts processes: the slow tier (make test-all).
pytestmark = pytest.mark.slow

# The workers and shared references live in tests/, one folder up.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALGORITHMS = ("fedavg", "scaffold", "fedbn")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(tmp_path, devices, runner, num_processes=1):
    out = str(tmp_path / f"{devices}-{runner}-{num_processes}.npz")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([HERE, os.path.dirname(HERE)])}
    env.pop("XLA_FLAGS", None)
    port = _free_port()
    commands = [
        [sys.executable, os.path.join(HERE, "parallel_worker.py"), out, str(devices), runner]
        + ([str(pid), str(num_processes), str(port)] if num_processes > 1 else [])
        for pid in range(num_processes)
    ]
    procs = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for cmd in commands
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-3000:]
    return dict(np.load(out))


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("one"), 1, "vmap")


def _assert_same(result, reference, devices):
    for name in ALGORITHMS:
        assert int(result[f"{name}/devices"]) == devices
        leaves = sorted(k for k in reference if k.startswith(f"{name}/leaf"))
        assert leaves and leaves == sorted(k for k in result if k.startswith(f"{name}/leaf"))
        for key in leaves:
            np.testing.assert_allclose(
                result[key], reference[key], rtol=1e-5, atol=1e-5, err_msg=key
            )
        counts = result[f"{name}/compiles"]
        assert counts[1] == counts[-1], f"{name} compiled after round 2: {counts}"


@pytest.mark.parametrize(
    "devices, runner, num_processes",
    [(2, "vmap", 1), (4, "vmap", 1), (4, "sequential", 1), (1, "vmap", 2)],
    ids=["2-devices", "4-devices", "4-devices-sequential", "2-processes"],
)
def test_sharded_runs_equal_one_device(tmp_path, one_device, devices, runner, num_processes):
    result = _run(tmp_path, devices, runner, num_processes)
    _assert_same(result, one_device, devices * num_processes)
    _assert_same(one_device, one_device, 1)
