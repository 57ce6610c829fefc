"""``fedjax-keras simulate --seeds ... --client-lr a,b``: a sweep equals its single runs."""

import json
import shutil

import jax
import numpy as np
import pytest
import yaml

import fedjax_keras  # noqa: F401 (JAX backend before keras)
from fedjax_keras import checkpoint
from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli import main
from fedjax_keras.cli.experiment import build_model, build_process, build_sweep
from fedjax_keras.cli.tasks import load_task

TINY = [
    "simulate",
    "--task",
    "synthetic",
    "--num-clients",
    "10",
    "--client-size",
    "12",
    "--cohort-size",
    "3",
    "--no-progress",
    "--eval-every",
    "1",
]
SWEEP = ["--seeds", "0,1", "--client-lr", "0.05,0.1", "--runner", "vmap"]
RUNS = [(0, 0.05), (1, 0.1)]
TOL = {"rtol": 1e-5, "atol": 1e-6}


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    """A 2-round sweep of 2 runs (seeds 0, 1; client rates 0.05, 0.1)."""
    run_dir = tmp_path_factory.mktemp("sweep") / "run"
    assert main([*TINY, *SWEEP, "--rounds", "2", "--run-dir", str(run_dir)]) == 0
    return run_dir


def _rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def _config(run_dir):
    return config_lib.resolve(config_lib.read_config_file(str(run_dir / "config.yaml")), {}, {})


def _sweep_state(run_dir, round_num):
    """The sweep's checkpoint of ``round_num`` and the sweep that reads it."""
    config = _config(run_dir)
    task = load_task(config)
    sweep = build_sweep(config, build_model(config, task), task)
    return sweep, checkpoint.restore_state(run_dir / "checkpoints", sweep.initialize(), round_num)


@pytest.mark.slow
def test_each_run_equals_its_single_run(two_rounds, tmp_path, capsys):
    top = sorted(p.name for p in two_rounds.iterdir())
    assert top == [".lock", "checkpoints", "config.yaml", "run_00", "run_01", "sweep.png"]
    assert (two_rounds / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = yaml.safe_load((two_rounds / "config.yaml").read_text())
    assert saved["seeds"] == "0,1" and saved["client_lr"] == "0.05,0.1"
    assert saved["runner"] == "vmap"
    sweep, states = _sweep_state(two_rounds, 2)

    for k, (seed, lr) in enumerate(RUNS):
        single_dir = tmp_path / f"single_{k}"
        args = ["--seed", str(seed), "--client-lr", str(lr), "--runner", "vmap"]
        assert main([*TINY, *args, "--rounds", "2", "--run-dir", str(single_dir)]) == 0
        rows, single = _rows(two_rounds / f"run_{k:02d}"), _rows(single_dir)
        assert [row["round"] for row in rows] == [1, 2]
        for row, alone in zip(rows, single):
            assert (row["seed"], row["client_lr"], row["server_lr"]) == (seed, lr, 1.0)
            assert row["num_examples"] == alone["num_examples"]
            assert row["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-5)
            assert row["eval_accuracy"] == pytest.approx(alone["eval_accuracy"], abs=1e-6)
        header = (two_rounds / f"run_{k:02d}" / "metrics.csv").read_text().splitlines()[0]
        assert header.endswith(",seed,client_lr,server_lr")

        config = _config(single_dir)
        task = load_task(config)
        template = build_process(config, build_model(config, task), task).initialize(seed)
        alone = checkpoint.restore_state(single_dir / "checkpoints", template, 2)
        got, want = sweep.run_state(states, k).model, alone.model
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_allclose(a, b, **TOL)
    # The summary table: one row per run.
    out = capsys.readouterr().out
    assert "best eval acc" in out or "best eval" in out


@pytest.mark.slow
def test_a_resumed_sweep_equals_the_uninterrupted_one(two_rounds, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(two_rounds, resumed)
    assert main(["simulate", "--resume", "--run-dir", str(resumed), "--rounds", "3"]) == 0
    whole = tmp_path / "whole"
    assert main([*TINY, *SWEEP, "--rounds", "3", "--run-dir", str(whole)]) == 0
    for k in range(2):
        keys = ("round", "train_loss", "eval_accuracy", "seed", "client_lr")
        a, b = _rows(resumed / f"run_{k:02d}"), _rows(whole / f"run_{k:02d}")
        assert [{n: r[n] for n in keys} for r in a] == [{n: r[n] for n in keys} for r in b]
    _, a = _sweep_state(resumed, 3)
    _, b = _sweep_state(whole, 3)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize(
    "args, names",
    [
        (["--client-lr", "0.1,abc"], "--client-lr: client_lr must be"),
        (["--client-lr", "0.1,"], "--client-lr: client_lr must be"),
        (["--client-lr", "0.1,-1"], "--client-lr: expected a finite number > 0"),
        (["--server-lr", "1,nan"], "--server-lr: expected a finite number > 0"),
        (["--seeds", "0,x"], "--seeds: seeds must be a comma-separated list of ints"),
        (["--seeds", "0,-1"], "--seeds: expected an int >= 0"),
        (["--seeds", "0,1,2", "--client-lr", "0.1,0.2"], "--client-lr: 2 values, but --seeds"),
        (["--seeds", "0,1", "--runner", "sequential"], "--runner: a sweep"),
        (["--client-lr", "0.1,0.2", "--algorithm", "scaffold"], "fedavg, fedavg_unweighted"),
    ],
)
def test_bad_sweeps_are_one_line(capsys, args, names):
    assert main([*TINY, *args, "--rounds", "0", "--run-dir", "run"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fedjax-keras: error: ") and names in line, line


def test_lists_in_config_files_and_launch(tmp_path, capsys, two_rounds):
    yaml_list = tmp_path / "list.yaml"
    yaml_list.write_text("seeds: [0, 1]\n")
    assert main([*TINY, "--config", str(yaml_list), "--rounds", "0"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"--config {yaml_list}: seeds must be" in line and "e.g. 0,1,2" in line
    assert main(["launch", "--num-processes", "2", "--", *TINY, "--seeds", "0,1"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("fedjax-keras: error: launch: a sweep")
    resume = ["simulate", "--resume", "--run-dir", str(two_rounds), "--seeds", "0,2"]
    assert main(resume) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--seeds: the run in" in line and "(0, 1)" in line


@pytest.mark.slow
def test_server_rates_dropout_and_dp_follow_the_single_run(tmp_path):
    """A list of server rates, the default client rate, FedProx, dropout, a noised dp stage."""
    pytest.importorskip("dp_accounting")
    common = [*TINY, "--algorithm", "fedprox", "--dropout", "0.3", "--rounds", "2"]
    common += ["--aggregator", "dp:noise_multiplier=1.0,clip=0.5"]
    assert main([*common, "--seeds", "0,1", "--server-lr", "1,0.5", "--run-dir", "sweep"]) == 0
    assert main([*common, "--seed", "1", "--server-lr", "0.5", "--run-dir", "single"]) == 0
    rows, single = _rows(tmp_path / "sweep" / "run_01"), _rows(tmp_path / "single")
    for row, alone in zip(rows, single, strict=True):
        assert (row["seed"], row["client_lr"], row["server_lr"]) == (1, 0.05, 0.5)
        assert row["num_clients"] == alone["num_clients"]
        assert row["train_loss"] == pytest.approx(alone["train_loss"], rel=1e-5)
        assert row["epsilon"] == pytest.approx(alone["epsilon"], rel=1e-9)
