"""The fedjax-keras command: end to end, config files, every algorithm, user mistakes."""

import csv
import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
import yaml

import fedjax_keras  # noqa: F401 (JAX backend before keras)
from fedjax_keras import aggregation, algorithms, checkpoint
from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli import main
from fedjax_keras.cli.config import ALGORITHMS
from fedjax_keras.cli.experiment import build_model
from fedjax_keras.cli.main import build_parser
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


@pytest.mark.slow
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


def _documented_process(algorithm, model, population_size):
    """The process docs/cli.md promises for ``--algorithm`` with default rates, from the
    public builders: client SGD 0.05 (the synthetic task's default), server rates 1.0
    (SGD), 0.1 (fedsgd, fedadagrad), 0.01 (fedadam, fedyogi). Algorithms beyond the
    classical ones are built from their registry entry with the CLI's defaults (this
    checks the command line's plumbing; their own tests check their numbers)."""
    engine = {"batch_size": 20, "epochs": 1, "runner": "vmap"}
    client, server = optax.sgd(0.05), optax.sgd(1.0)
    adaptive = {  # Reddi et al. 2021, Algorithm 2: b1 0.9, b2 0.99, tau 1e-3
        "fedadam": lambda: algorithms.build_fed_adam(model, client, 0.01, **engine),
        "fedyogi": lambda: algorithms.build_fed_yogi(model, client, 0.01, **engine),
        "fedadagrad": lambda: algorithms.build_fed_adagrad(model, client, 0.1, **engine),
    }
    if algorithm in adaptive:
        return adaptive[algorithm]()
    if algorithm == "fedavg":
        return algorithms.build_weighted_fed_avg(model, client, server, **engine)
    if algorithm == "fedavg_unweighted":
        return algorithms.build_unweighted_fed_avg(model, client, server, **engine)
    if algorithm == "fedprox":
        return algorithms.build_fed_prox(model, client, server, mu=0.01, **engine)
    if algorithm == "fedsgd":
        return algorithms.build_fed_sgd(model, optax.sgd(0.1), **engine)
    if algorithm == "scaffold":
        return algorithms.build_scaffold(
            model, 0.05, server, population_size=population_size, **engine
        )
    entry = algorithms.get_algorithm(algorithm)
    settings = algorithms.AlgorithmSettings(0.05, None, population_size, dict(entry.options))
    return entry.make(model, settings, **engine)


def _state_leaves(state):
    """The state's arrays, the client-state store's rows included."""
    leaves = jax.tree.leaves(state)
    store = state.client_states
    if store is not None and hasattr(store, "client_ids"):
        leaves += jax.tree.leaves(store.gather(store.client_ids))
    return [np.asarray(leaf) for leaf in leaves]


# fedprox also runs in the config-file tests, fedavg in the end-to-end test.
@pytest.mark.slow
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_first_round_matches_the_documented_builder(tmp_path, algorithm):
    run_dir = tmp_path / algorithm
    args = [*TINY, "--algorithm", algorithm, "--rounds", "1", "--runner", "vmap"]
    if algorithm == "fedrecon":
        # Its local layer must leave global ones (not the default one-layer model), and
        # its clients need a batch after the reconstruction batch (batch size 20).
        args += ["--model", "mlp", "--client-size", "60"]
    assert main([*args, "--run-dir", str(run_dir)]) == 0
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["num_clients"] == 3 and row["eval_accuracy"] is not None

    # The same round in Python: the CLI's task and model, the documented algorithm.
    config = config_lib.resolve(config_lib.read_config_file(str(run_dir / "config.yaml")), {}, {})
    task = load_task(config)
    process = _documented_process(
        algorithm, build_model(config, task), population_size=task.train.num_clients
    )
    initial = process.initialize(config.seed)
    cohort = task.train.sample_clients(config.cohort_size, seed=[config.seed, 0])
    expected = process.next(initial, cohort)
    cli_state = checkpoint.restore_state(run_dir / "checkpoints", initial, round_num=1)

    assert row["train_loss"] == pytest.approx(expected.metrics["loss"], rel=1e-6)
    got, want = _state_leaves(cli_state), _state_leaves(expected.state)
    # The model, or the client table for personal layers (FedRep's heads on the
    # one-layer default model, where no body is shared).
    moved = [not np.array_equal(a, b) for a, b in zip(_state_leaves(initial), want)]
    assert any(moved), "the round left the state unchanged: nothing is compared"
    assert len(got) == len(want)
    for i, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"state array {i}")


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
    duplicate = tmp / "duplicate.yaml"
    duplicate.write_text("task: synthetic\nrounds: 3\ncohort-size: 2\nrounds: 5\n")
    broken_yaml = tmp / "broken.yaml"
    broken_yaml.write_text("task: synthetic\nrounds: 3\nalpha: [1, 2\nbeta: 1\n")
    a_file = tmp / "a_file"
    a_file.write_text("not a directory")
    leaf_dir = tmp / "leaf"
    leaf_dir.mkdir()
    good_user = {"x": [[0.5, 0.25]], "y": [1]}
    (leaf_dir / "0.json").write_text(
        json.dumps({"users": ["u0"], "num_samples": [1], "user_data": {"u0": good_user}})
    )
    (leaf_dir / "1.json").write_text('{"users": ["u1"], "num_samples": [1], "user_data": {"u1"')
    import h5py

    ragged = tmp / "ragged.h5"
    with h5py.File(ragged, "w") as f:
        for client, width in (("f0000_1", 28), ("f0001_2", 27)):
            f[f"examples/{client}/pixels"] = np.zeros((3, 28, width), np.float32)
            f[f"examples/{client}/label"] = np.zeros(3, np.int32)
    users_string = tmp / "users_string.json"
    users_string.write_text(
        json.dumps({"users": "abc", "num_samples": [1, 1, 1], "user_data": {"abc": good_user}})
    )
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
        "negative seed": (["--seed", "-1"], "--seed", ">= 0 and <= 4294967295"),
        "seed above uint32": (["--seed", "4294967296"], "--seed", ">= 0 and <= 4294967295"),
        "task seed above uint32": (["--task-seed", "4294967296"], "--task-seed", "4294967295"),
        "int beyond int32": (["--batch-size", "99999999999999999999"], "--batch-size", "<="),
        "non-finite learning rate": (["--client-lr", "inf"], "--client-lr", "finite"),
        "non-finite alpha": (["--alpha", "nan"], "--alpha", "finite"),
        "negative beta": (["--beta", "-1"], "--beta", ">= 0"),
        "run dir below a file": (
            ["--run-dir", str(a_file / "run")],
            f"--run-dir: cannot create {str(a_file / 'run')!r}",
            "writable directory",
        ),
        "duplicate YAML key": (["--config", str(duplicate)], "'rounds'", "line 4"),
        "YAML syntax error": (["--config", str(broken_yaml)], str(broken_yaml), "line 4"),
        "malformed LEAF JSON": (["--task-file", str(leaf_dir)], "1.json", "not valid JSON"),
        "LEAF users as a string": (["--task-file", str(users_string)], "'users'", "a list"),
        "ragged HDF5 client": (
            ["--task-file", str(ragged)],
            f"{ragged}: client 'f0001_2'",
            "pixels of shape [3, 28, 27]",
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
    "negative seed",
    "seed above uint32",
    "task seed above uint32",
    "int beyond int32",
    "non-finite learning rate",
    "non-finite alpha",
    "negative beta",
    "run dir below a file",
    "duplicate YAML key",
    "YAML syntax error",
    "malformed LEAF JSON",
    "LEAF users as a string",
    "ragged HDF5 client",
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


def test_unwritable_run_dir_is_one_line(tmp_path, capsys, monkeypatch):
    parent = tmp_path / "read_only"
    parent.mkdir()
    parent.chmod(0o555)
    if os.access(parent, os.W_OK):  # root ignores the mode: refuse as the kernel would
        real_makedirs = os.makedirs

        def refuse(path, *args, **kwargs):
            if str(path).startswith(str(parent)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_makedirs(path, *args, **kwargs)

        monkeypatch.setattr(os, "makedirs", refuse)
    status = main([*TINY, "--run-dir", str(parent / "run")])
    monkeypatch.undo()
    parent.chmod(0o755)
    (line,) = capsys.readouterr().err.splitlines()
    assert status == 2
    assert line == (
        f"fedjax-keras: error: --run-dir: cannot create {str(parent / 'run')!r} "
        "(Permission denied); expected a writable directory with free space."
    )


@pytest.mark.slow
def test_mistake_in_a_real_process_exits_nonzero_without_traceback():
    proc = _run("simulate", "--algorithm", "fedfoo")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    # Every registered name, in registration order (the registry grows with the algorithms).
    expected = (
        "fedjax-keras: error: --algorithm: unknown algorithm 'fedfoo'; expected one of "
        f"{list(ALGORITHMS)}."
    )
    assert list(ALGORITHMS[:3]) == ["fedavg", "fedavg_unweighted", "fedprox"]
    assert proc.stderr.strip().splitlines() == [expected]


def test_leaf_json_task_file(tmp_path, capsys):
    rng = np.random.default_rng(0)
    users = [f"f_{i:05d}" for i in range(5)]
    user_data = {
        u: {"x": rng.normal(size=(8, 5)).round(3).tolist(), "y": rng.integers(0, 3, 8).tolist()}
        for u in users
    }
    path = tmp_path / "train.json"
    # f_00004 has data but is missing from 'users': skipped, with a one-line warning.
    blob = {"users": users[:4], "num_samples": [8] * 4, "user_data": user_data}
    path.write_text(json.dumps(blob))
    run_dir = tmp_path / "run"
    args = ["simulate", "--task-file", str(path), "--rounds", "1", "--cohort-size", "2"]
    assert main([*args, "--no-progress", "--run-dir", str(run_dir)]) == 0
    (row,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert row["num_clients"] == 2 and row["num_examples"] > 0
    (warning,) = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warning == (
        f"fedjax-keras: warning: {path}: user 'f_00004' is in user_data but not in 'users'; "
        "it is skipped (add it to 'users' and 'num_samples' to load it)."
    )


def test_every_flag_is_documented():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    parser = build_parser()
    simulate = parser._subparsers._group_actions[0].choices["simulate"]
    flags = [s for action in simulate._actions for s in action.option_strings if s.startswith("--")]
    missing = [f for f in flags if f != "--help" and f"`{f}`" not in docs]
    assert not missing, f"docs/cli.md does not document {missing}"


@pytest.mark.slow
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


@pytest.mark.slow
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
    # to end; the masking itself is checked against Keras in tests/models/test_keras_masks.py.
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"] in (None, "char_lstm")
    assert np.isfinite(row["train_loss"]) and row["num_examples"] > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "spec, aggregator",
    [
        (
            "dp:noise_multiplier=0.7,clip=0.5",
            lambda: aggregation.dp_aggregator(0.7, clients_per_round=3, clip=0.5),
        ),
        (
            "dp_ftrl:noise_multiplier=0.7,clip=0.5,restart_rounds=1",
            lambda: aggregation.dp_ftrl_aggregator(
                0.7, clients_per_round=3, clip=0.5, restart_rounds=1
            ),
        ),
        (
            "clipped:norm=0.05/trimmed_mean:beta=0.34",
            lambda: aggregation.clipped(0.05, aggregation.trimmed_mean(0.34)),
        ),
    ],
)
def test_aggregator_flag_builds_the_aggregator_of_the_python_api(tmp_path, spec, aggregator):
    run_dir = tmp_path / "run"
    args = [*TINY, "--rounds", "2", "--runner", "vmap", "--aggregator", spec]
    assert main([*args, "--run-dir", str(run_dir)]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]

    config = config_lib.resolve(config_lib.read_config_file(str(run_dir / "config.yaml")), {}, {})
    task = load_task(config)
    process = algorithms.build_weighted_fed_avg(
        build_model(config, task),
        optax.sgd(0.05),
        optax.sgd(1.0),
        aggregator=aggregator(),
        batch_size=20,
        runner="vmap",
    )
    state = process.initialize(config.seed)
    for round_num, row in enumerate(rows):
        cohort = task.train.sample_clients(config.cohort_size, seed=[config.seed, round_num])
        out = process.next(state, cohort)
        state = out.state
        assert row["train_loss"] == pytest.approx(out.metrics["loss"], rel=1e-6)
    cli_state = checkpoint.restore_state(run_dir / "checkpoints", state, round_num=2)
    for a, b in zip(jax.tree.leaves(cli_state.model), jax.tree.leaves(state.model)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    if spec.startswith("dp:"):
        # Fixed-size cohorts of 3 from 10 clients, delta 1/10, as dp-accounting computes it.
        import dp_accounting

        for rounds, row in enumerate(rows, start=1):
            event = dp_accounting.SelfComposedDpEvent(
                dp_accounting.SampledWithoutReplacementDpEvent(
                    10, 3, dp_accounting.GaussianDpEvent(0.7)
                ),
                rounds,
            )
            acc = dp_accounting.rdp.RdpAccountant(
                neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE
            )
            acc.compose(event)
            assert row["epsilon"] == pytest.approx(acc.get_epsilon(0.1), rel=1e-9)
            assert row["delta"] == pytest.approx(0.1)
        assert rows[1]["epsilon"] > rows[0]["epsilon"]
    else:
        assert "epsilon" not in rows[0]


def test_tensorboard_scalars_are_the_metrics_rows_also_after_resume(tmp_path):
    pytest.importorskip("tensorboardX")
    from tensorboard_events import scalars

    run_dir, board = tmp_path / "run", tmp_path / "tb"
    args = [*TINY, "--run-dir", str(run_dir), "--tensorboard", str(board), "--eval-every", "2"]
    assert main([*args, "--rounds", "2"]) == 0
    assert main([*args, "--rounds", "3", "--resume"]) == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    found = scalars(board)
    assert found["train_loss"] == [(r["round"], pytest.approx(r["train_loss"])) for r in rows]
    assert [step for step, _ in found["eval_accuracy"]] == [2, 3]


def test_dp_ftrl_says_once_why_it_reports_no_epsilon(tmp_path, capsys):
    args = [*TINY, "--rounds", "1", "--run-dir", str(tmp_path / "run")]
    assert main([*args, "--aggregator", "dp_ftrl:noise_multiplier=0.5,clip=1.0"]) == 0
    err = capsys.readouterr().err
    assert err.count("dp_ftrl reports no epsilon") == 1, err
    rows = [
        json.loads(line)
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().split("\n")
        if line
    ]
    assert "epsilon" not in rows[0]
    # Without noise there is no privacy to account for, and no note.
    assert (
        main(
            [
                *TINY,
                "--rounds",
                "1",
                "--run-dir",
                str(tmp_path / "quiet"),
                "--aggregator",
                "dp_ftrl:noise_multiplier=0,clip=1.0",
            ]
        )
        == 0
    )
    assert "no epsilon" not in capsys.readouterr().err
