"""The command line on several devices and processes: the same run, the same numbers."""

import json
import os
import subprocess
import sys

import pytest

from fedjax_keras.cli import main

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
    "2",
    "--eval-every",
    "2",
    "--checkpoint-every",
    "2",
    "--no-progress",
    "--algorithm",
    "scaffold",
]


def _last_row(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return json.loads(f.read().splitlines()[-1])


def _subprocess(args, cwd):
    proc = subprocess.run(
        [sys.executable, "-m", "fedjax_keras", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("one") / "run")
    assert main(["simulate", *TINY, "--run-dir", run_dir]) == 0
    return _last_row(run_dir)


def _assert_same_run(row, reference):
    for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy"):
        assert row[key] == pytest.approx(reference[key], rel=1e-5, abs=1e-6), key
    assert row["num_examples"] == reference["num_examples"]


@pytest.mark.slow
def test_devices_flag_shards_the_clients_and_changes_no_number(tmp_path, one_process):
    _subprocess(["simulate", *TINY, "--devices", "2", "--run-dir", "run"], tmp_path)
    _assert_same_run(_last_row(tmp_path / "run"), one_process)


@pytest.mark.slow
def test_launch_two_processes_equals_one_and_resumes(tmp_path, one_process):
    launch = ["launch", "--num-processes", "2", "--"]
    proc = _subprocess([*launch, "simulate", *TINY, "--run-dir", "run"], tmp_path)
    assert "Run directory" in proc.stdout  # process 0's summary
    _assert_same_run(_last_row(tmp_path / "run"), one_process)
    resumed = ["simulate", "--run-dir", "run", "--resume", "--rounds", "3", "--no-progress"]
    proc = _subprocess([*launch, *resumed], tmp_path)
    assert "Resuming run from round 2 of 3" in proc.stderr
    assert _last_row(tmp_path / "run")["round"] == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["launch", "--num-processes", "0", "--", "simulate"], "--num-processes: expected an int"),
        (["launch", "--num-processes", "2"], "expected the command after '--'"),
        (["launch", "--num-processes", "2", "--", "simulate", "--rounds", "x"], "--rounds"),
        (["simulate", "--options", "mu"], "--options: expected NAME=VALUE"),
        (["simulate", "--options", "lam=1"], "fedavg has no option 'lam'; it takes: none"),
        (["simulate", "--algorithm", "fedprox", "--options", "mu=high"], "mu must be float"),
        (["simulate", "--devices", "0"], "--devices: expected an int >= 1"),
        (["simulate", "--dropout", "1.5"], "--dropout: expected a probability"),
        (["simulate", "--straggler-work", "0"], "--straggler-work: expected a fraction"),
    ],
)
def test_mistakes_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
