"""fedjax_keras.checkpoint: whole-state save/restore, and kill-and-resume of the CLI."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_keras  # noqa: F401 (JAX backend before keras)
from fedjax_keras.algorithms import ServerState
from fedjax_keras.checkpoint import CheckpointMismatchError, latest_round, restore_state, save_state
from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli import main as cli_main
from fedjax_keras.cli.experiment import build_model, build_process
from fedjax_keras.cli.tasks import load_task
from fedjax_keras.client import ClientTable
from fedjax_keras.models import ModelWeights


def _state(table=None, scale=1.0):
    return ServerState(
        model=ModelWeights(
            {"dense/kernel": jnp.arange(6.0).reshape(2, 3) * scale}, {"bn/mean": jnp.ones(3)}
        ),
        optimizer_state=({"mu": jnp.full((2, 3), 0.5)}, ()),
        round_num=np.int64(7),
        seed=np.int64(3),
        client_states=table,
    )


def _assert_bitwise(a, b):
    leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(jax.tree.map(lambda _: 0, a)) == jax.tree.structure(
        jax.tree.map(lambda _: 0, b)
    )
    for x, y in zip(leaves_a, leaves_b):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_a_client_table_needs_no_special_case(tmp_path):
    default = {"c": np.zeros((2,), np.float32), "n": np.zeros((), np.int32)}
    positions = np.array([4, 0, 2])
    table = ClientTable.create(default, 5).scatter(
        positions,
        {"c": np.arange(6, dtype=np.float32).reshape(3, 2), "n": np.array([1, 2, 3], np.int32)},
    )
    state = _state(table)
    save_state(tmp_path, state, 7)
    assert latest_round(tmp_path) == 7
    restored = restore_state(tmp_path, _state(ClientTable.create(default, 5), scale=0.0))
    _assert_bitwise(state, restored)
    assert isinstance(restored.round_num, np.int64) and int(restored.round_num) == 7
    assert restored.client_states.seen_positions().tolist() == [0, 2, 4]
    everyone = np.arange(5)
    _assert_bitwise(table.gather(everyone), restored.client_states.gather(everyone))
    # A template of another population size does not fit.
    with pytest.raises(CheckpointMismatchError, match="population_size"):
        restore_state(tmp_path, _state(ClientTable.create(default, 6)))


def test_latest_round_rounds_and_errors(tmp_path):
    assert latest_round(tmp_path / "missing") is None
    for r in (2, 4, 6):
        save_state(tmp_path, _state(scale=r), r, max_to_keep=2)
    assert latest_round(tmp_path) == 6
    assert sorted(os.listdir(tmp_path)) == ["4", "6"]
    _assert_bitwise(restore_state(tmp_path, _state(), round_num=4), _state(scale=4))
    with pytest.raises(FileNotFoundError, match="round 2"):
        restore_state(tmp_path, _state(), round_num=2)
    other = _state().replace(algorithm_state={"control": jnp.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match="template"):
        restore_state(tmp_path, other)
    with pytest.raises(FileNotFoundError):
        restore_state(tmp_path / "empty", _state())


TINY = [
    "simulate",
    "--task",
    "synthetic",
    "--num-clients",
    "12",
    "--client-size",
    "15",
    "--algorithm",
    "scaffold",
    "--client-lr",
    "0.05",
    "--cohort-size",
    "4",
    "--rounds",
    "4",
    "--checkpoint-every",
    "2",
    "--eval-every",
    "2",
    "--no-progress",
]


def _template(run_dir):
    """``process.initialize(seed)`` of the run's saved configuration."""
    saved = config_lib.read_config_file(os.path.join(run_dir, "config.yaml"))
    config = config_lib.resolve(saved, {}, {})
    task = load_task(config)
    process = build_process(config, build_model(config, task), task)
    return process.initialize(config.seed)


def _rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_killed_run_resumes_bit_identical(tmp_path):
    killed, whole = str(tmp_path / "killed"), str(tmp_path / "whole")
    env = {**os.environ, "FEDJAX_KERAS_KILL_AFTER_ROUND": "3"}
    proc = subprocess.run(
        [sys.executable, "-m", "fedjax_keras", *TINY, "--run-dir", killed],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -9, proc.stderr
    assert latest_round(os.path.join(killed, "checkpoints")) == 2
    assert [row["round"] for row in _rows(killed)] == [1, 2, 3]  # round 3 logged, not saved

    assert cli_main(["simulate", "--run-dir", killed, "--resume", "--no-progress"]) == 0
    assert cli_main([*TINY, "--run-dir", whole]) == 0

    template = _template(whole)
    final_killed = restore_state(os.path.join(killed, "checkpoints"), template, 4)
    final_whole = restore_state(os.path.join(whole, "checkpoints"), template, 4)
    _assert_bitwise(final_killed, final_whole)
    # SCAFFOLD's control variates came back (the table is part of the state above).
    assert len(final_killed.client_states.seen_positions()) > 0
    resumed, uninterrupted = _rows(killed), _rows(whole)
    assert [row["round"] for row in resumed] == [1, 2, 3, 4]
    for a, b in zip(resumed, uninterrupted):
        for key in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy", "num_examples"):
            assert a[key] == b[key], (a["round"], key)
