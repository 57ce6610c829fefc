"""The fedjax-keras command: end to end, config files, every algorithm, user mistakes."""

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import fedjax_keras  # noqa: F401 (JAX backend before keras)
from fedjax_keras.cli import main
from fedjax_keras.cli.config import ALGORITHMS
from fedjax_keras.cli.main import build_parser

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
]


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path, monkeypatch):
    """Runs without --run-dir write under ./runs: keep them out of the checkout."""
    monkeypatch.chdir(tmp_path)


def _run(*args):
    return subprocess.run(
        [sys.executable, "-m", "fedjax_keras", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_end_to_end_subprocess_writes_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    proc = _run(*TINY, "--rounds", "2", "--eval-every", "1", "--run-dir", str(run_dir))
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "eval acc" in proc.stdout and "run" in proc.stdout  # the summary table

    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["task"] == "synthetic" and config["rounds"] == 2 and config["num_clients"] == 10
    assert config["algorithm"] == "fedavg"
    assert config["runner"] == "vmap"  # 'auto' resolved and recorded, so --resume repeats it
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in rows] == [1, 2]
    for row in rows:
        assert row["num_clients"] == 3 and row["train_loss"] > 0 and 0 <= row["eval_accuracy"] <= 1
        assert row["clients_per_second"] > 0
    with open(run_dir / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert [int(r["round"]) for r in table] == [1, 2]
    assert float(table[1]["train_loss"]) == pytest.approx(rows[1]["train_loss"])
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["2"]


@pytest.mark.parametrize("suffix", ["yaml", "toml"])
def test_config_file_and_flags_override_it(tmp_path, suffix, capsys):
    text = {
        "yaml": "task: synthetic\nnum-clients: 10\nclient_size: 12\ncohort_size: 3\n"
        "rounds: 5\nalgorithm: fedprox\nmu: 0.5\nprogress: false\n",
        "toml": 'task = "synthetic"\nnum-clients = 10\nclient_size = 12\ncohort_size = 3\n'
        'rounds = 5\nalgorithm = "fedprox"\nmu = 0.5\nprogress = false\n',
    }[suffix]
    path = tmp_path / f"exp.{suffix}"
    path.write_text(text)
    run_dir = tmp_path / "run"
    assert (
        main(["simulate", "--config", str(path), "--rounds", "1", "--run-dir", str(run_dir)]) == 0
    )
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["algorithm"] == "fedprox" and saved["mu"] == 0.5 and saved["num_clients"] == 10
    assert saved["rounds"] == 1  # the flag wins over the file
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1


# fedavg runs in the end-to-end test, fedprox in the config-file tests.
@pytest.mark.parametrize("algorithm", [a for a in ALGORITHMS if a not in ("fedavg", "fedprox")])
def test_every_algorithm_runs_a_round(tmp_path, algorithm):
    run_dir = tmp_path / algorithm
    assert main([*TINY, "--algorithm", algorithm, "--rounds", "1", "--run-dir", str(run_dir)]) == 0
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["num_clients"] == 3 and row["eval_accuracy"] is not None


BAD_MODEL = textwrap.dedent(
    """
    import keras

    def three_outputs():
        return keras.Sequential([keras.Input((60,)), keras.layers.Dense(3)])

    def not_a_model():
        return 42

    def broken(num_classes):
        raise RuntimeError("no weights file")
    """
)


@pytest.fixture
def bad_models(tmp_path, monkeypatch):
    (tmp_path / "cli_bad_models.py").write_text(BAD_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))


def _error_cases(tmp):
    existing = tmp / "existing"
    (existing / "checkpoints").mkdir(parents=True)
    (existing / "config.yaml").write_text("task: synthetic\n")
    not_leaf = tmp / "not_leaf.json"
    not_leaf.write_text('{"hello": 1}')
    bad_key = tmp / "bad_key.yaml"
    bad_key.write_text("task: synthetic\nlearning_rate: 0.1\n")
    return {
        "missing task file": (
            ["--task-file", str(tmp / "nope.h5")],
            "--task-file",
            "does not exist",
        ),
        "task file not LEAF": (["--task-file", str(not_leaf)], "--task-file", "leaf_json"),
        "model unfit for inputs": (
            ["--task", "synthetic", "--model", "small_cnn"],
            "--model small_cnn",
            "images",
        ),
        "model function raises": (
            ["--model", "cli_bad_models:broken"],
            "--model",
            "RuntimeError: no weights file",
        ),
        "unknown task": (["--task", "mnist"], "--task", "emnist_like"),
        "unknown algorithm": (["--algorithm", "fedfoo"], "--algorithm", "fedavg"),
        "model output shape": (
            ["--task", "synthetic", "--model", "cli_bad_models:three_outputs"],
            "--model",
            "[batch, 10]",
        ),
        "not a model": (["--model", "cli_bad_models:not_a_model"], "--model", "keras.Model"),
        "unknown model": (["--model", "resnet"], "--model", "small_cnn"),
        "missing module": (["--model", "no_such_module_xyz:f"], "--model", "no_such_module_xyz"),
        "missing config": (["--config", str(tmp / "nope.yaml")], "--config", "does not exist"),
        "unknown config key": (["--config", str(bad_key)], "learning_rate", "expected one of"),
        "not an int": (["--rounds", "many"], "--rounds", "int"),
        "out of range": (["--cohort-size", "0"], "--cohort-size", ">= 1"),
        "unknown flag": (["--learning-rate", "1"], "--learning-rate", "unrecognized"),
        "resume without run dir": (["--resume"], "--resume", "--run-dir"),
        "run dir taken": (["--run-dir", str(existing)], "--run-dir", "--resume"),
        "resume changes a setting": (
            ["--run-dir", str(existing), "--resume", "--task", "cifar_like"],
            "--task",
            "keeps its settings",
        ),
    }


ERROR_IDS = [
    "task file not LEAF",
    "model unfit for inputs",
    "model function raises",
    "missing task file",
    "unknown task",
    "unknown algorithm",
    "model output shape",
    "not a model",
    "unknown model",
    "missing module",
    "missing config",
    "unknown config key",
    "not an int",
    "out of range",
    "unknown flag",
    "resume without run dir",
    "run dir taken",
    "resume changes a setting",
]


@pytest.mark.parametrize("case", ERROR_IDS)
def test_user_mistakes_get_one_line(tmp_path, capsys, bad_models, case):
    cases = _error_cases(tmp_path)
    assert sorted(cases) == sorted(ERROR_IDS)
    args, names, expected = cases[case]
    status = main(["simulate", *args, "--no-progress"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2
    assert len(lines) == 1, err
    assert lines[0].startswith("fedjax-keras: error: ")
    assert names in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in err


def test_mistake_in_a_real_process_exits_nonzero_without_traceback():
    proc = _run("simulate", "--algorithm", "fedfoo")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    # Every registered name, in registration order: the registry grows with each algorithm.
    expected = (
        "fedjax-keras: error: --algorithm: unknown algorithm 'fedfoo'; expected one of "
        f"{list(ALGORITHMS)}."
    )
    assert list(ALGORITHMS[:3]) == ["fedavg", "fedavg_unweighted", "fedprox"]
    assert proc.stderr.strip().splitlines() == [expected]


def test_leaf_json_task_file(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"f_{i:05d}" for i in range(4)]
    user_data = {
        u: {"x": rng.normal(size=(8, 5)).round(3).tolist(), "y": rng.integers(0, 3, 8).tolist()}
        for u in users
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps({"users": users, "num_samples": [8] * 4, "user_data": user_data}))
    run_dir = tmp_path / "run"
    args = ["simulate", "--task-file", str(path), "--rounds", "1", "--cohort-size", "2"]
    assert main([*args, "--no-progress", "--run-dir", str(run_dir)]) == 0
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["num_clients"] == 2 and row["num_examples"] > 0


def test_every_flag_is_documented():
    docs = (Path(__file__).parent.parent / "docs" / "cli.md").read_text()
    parser = build_parser()
    simulate = parser._subparsers._group_actions[0].choices["simulate"]
    flags = [s for action in simulate._actions for s in action.option_strings if s.startswith("--")]
    missing = [f for f in flags if f != "--help" and f"`{f}`" not in docs]
    assert not missing, f"docs/cli.md does not document {missing}"


def test_tff_h5_emnist_task_file(tmp_path):
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    path = tmp_path / "emnist.h5"
    with h5py.File(path, "w") as f:
        for client in ("f0000_1", "f0001_2", "f0002_3"):
            f[f"examples/{client}/pixels"] = rng.random((10, 28, 28), dtype=np.float32)
            f[f"examples/{client}/label"] = rng.integers(0, 62, 10).astype(np.int32)
    run_dir = tmp_path / "run"
    args = ["simulate", "--task-file", str(path), "--rounds", "1", "--cohort-size", "2"]
    assert main([*args, "--no-progress", "--run-dir", str(run_dir)]) == 0
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["client_lr"] == 0.2  # the image default, resolved into the saved config
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["num_examples"] == 16 and row["eval_accuracy"] is not None  # 8 train of 10 each


def test_shakespeare_h5_trains_the_char_lstm_with_pad_tokens_masked(tmp_path):
    import h5py

    path = tmp_path / "shakespeare.h5"
    lines = [b"To be, or not to be", b"that is the question", b"Whether tis nobler"]
    with h5py.File(path, "w") as f:
        for i in range(4):
            group = f.create_group(f"examples/CLIENT_{i}")
            group.create_dataset("snippets", data=lines[: 1 + i % 3], dtype=h5py.string_dtype())
    run_dir = tmp_path / "run"
    args = [
        "simulate",
        "--task-file",
        str(path),
        "--rounds",
        "1",
        "--cohort-size",
        "2",
        "--eval-every",
        "1",
        "--run-dir",
        str(run_dir),
        "--no-progress",
    ]
    assert main(args) == 0
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
    # The masked char-LSTM path (Embedding(mask_zero=True) under the engine) runs end
    # to end; the masking itself is checked against Keras in tests/test_keras_masks.py.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] in (None, "char_lstm")
    assert np.isfinite(row["train_loss"]) and row["num_examples"] > 0
