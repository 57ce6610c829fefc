"""``fedjax-keras launch`` when a process dies or its port is taken: it stops soon, in one line.

The launches run in a subprocess, as a user would start them. One chosen
process kills itself with SIGKILL after round 2 (`checkpoints.KILL_PROCESS_ENV`
with `checkpoints.KILL_AFTER_ROUND_ENV`); the launcher must stop the other,
name the dead one in its last line with the command that resumes the run, and
that command must continue the run from an intact checkpoint.
"""

import json
import os
import shlex
import socket
import subprocess
import sys
import time

import pytest

from fedjax_keras.cli import main
from fedjax_keras.cli.checkpoints import KILL_AFTER_ROUND_ENV, KILL_PROCESS_ENV

TINY = [
    "--task",
    "synthetic",
    "--num-clients",
    "12",
    "--client-size",
    "15",
    "--cohort-size",
    "4",
    "--rounds",
    "3",
    "--eval-every",
    "3",
    "--checkpoint-every",
    "1",
    "--no-progress",
]
# Generous: without the launcher's watch, a dead process 1 went unnoticed for
# 95 to 103 s (until process 0's collective timed out).
STOPPED_WITHIN_SECONDS = 30
ENV = {**os.environ, "KERAS_BACKEND": "jax", "OPENBLAS_NUM_THREADS": "1"}


def _fedjax_keras(args) -> list[str]:
    return [sys.executable, "-m", "fedjax_keras", *args]


def _rounds_logged(run_dir) -> list[int]:
    try:
        with open(os.path.join(run_dir, "metrics.jsonl")) as f:
            return [json.loads(line)["round"] for line in f.read().splitlines() if line]
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or mid-line
        return []


@pytest.mark.slow
@pytest.mark.parametrize("killed", [0, 1])
def test_a_killed_process_stops_the_launch_and_the_printed_command_resumes(tmp_path, killed):
    env = {**ENV, KILL_AFTER_ROUND_ENV: "2", KILL_PROCESS_ENV: str(killed)}
    launch = subprocess.Popen(
        _fedjax_keras(
            ["launch", "--num-processes", "2", "--", "simulate", *TINY, "--run-dir", "run"]
        ),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Both processes pass round 2's end-of-round agreement only after
        # process 0 logged the round, so the kill comes after this.
        deadline = time.monotonic() + 600
        while 2 not in _rounds_logged(tmp_path / "run") and launch.poll() is None:
            assert time.monotonic() < deadline, "round 2 was never logged"
            time.sleep(0.1)
        round_2_logged = time.monotonic()
        _, err = launch.communicate(timeout=STOPPED_WITHIN_SECONDS + 60)
    finally:
        if launch.poll() is None:
            launch.kill()
    stopped_after = time.monotonic() - round_2_logged

    assert launch.returncode == 128 + 9, err[-3000:]
    assert stopped_after < STOPPED_WITHIN_SECONDS, (stopped_after, err[-3000:])
    last = err.strip().splitlines()[-1]
    resume = "fedjax-keras launch --num-processes 2 -- simulate --resume --run-dir run"
    assert last == (
        f"fedjax-keras: error: process {killed} of 2 was killed by SIGKILL; stopped the others; "
        f"continue from the last checkpoint with: {resume}"
    ), err[-3000:]

    command = shlex.split(last.split("continue from the last checkpoint with: ")[1])
    assert command[0] == "fedjax-keras"
    resumed = subprocess.run(
        _fedjax_keras(command[1:]),
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # Round 2's checkpoint, or round 1's if process 0 was stopped while writing it.
    assert "from round 2 of 3" in resumed.stderr or "from round 1 of 3" in resumed.stderr
    assert _rounds_logged(tmp_path / "run")[-1] == 3


def test_a_port_in_use_is_one_line_before_any_process_starts(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        argv = ["launch", "--num-processes", "2", "--port", str(port), "--", "simulate", *TINY]
        assert main(argv) == 2
    assert capsys.readouterr().err == (
        f"fedjax-keras: error: launch: --port {port} is already in use; choose another or "
        "leave --port out to pick a free one.\n"
    )
    assert not os.listdir(tmp_path)  # no process started, no run directory made
