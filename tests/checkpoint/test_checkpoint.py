"""fedjax_keras.checkpoint: whole-state save/restore, and kill-and-resume of the CLI."""

import errno
import json
import os
import shutil
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_keras  # noqa: F401 (JAX backend before keras)
from fedjax_keras.algorithms import ServerState
from fedjax_keras.checkpoint import (
    CheckpointDiskFullError,
    CheckpointMismatchError,
    CheckpointSkippedWarning,
    CorruptCheckpointError,
    latest_round,
    restore_newest,
    restore_state,
    save_state,
)
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


def _largest_file(step_dir):
    files = [os.path.join(root, n) for root, _, names in os.walk(step_dir) for n in names]
    return max((f for f in files if "manifest.json" not in f), key=os.path.getsize)


def _truncate_data(step_dir):
    path = _largest_file(step_dir)
    os.truncate(path, 10)
    return os.path.relpath(path, step_dir), "has 10 bytes"


def _delete_data(step_dir):
    path = _largest_file(step_dir)
    os.remove(path)
    return os.path.relpath(path, step_dir), "is missing"


def _flip_byte(step_dir):
    path = _largest_file(step_dir)
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(path, "wb").write(bytes(data))
    return os.path.relpath(path, step_dir), "changed since it was written"


def _truncate_metadata(step_dir):
    path = os.path.join(step_dir, "meta", "metadata")
    os.truncate(path, 10)
    return "meta/metadata", "has 10 bytes"


@pytest.mark.parametrize("damage", [_truncate_data, _delete_data, _flip_byte, _truncate_metadata])
def test_corrupt_newest_checkpoint_falls_back_to_an_older_one(tmp_path, damage):
    for r in (2, 4, 6):
        save_state(tmp_path, _state(scale=r), r)
    name, reason = damage(str(tmp_path / "6"))
    with pytest.warns(CheckpointSkippedWarning) as caught:
        state, round_num = restore_newest(tmp_path, _state())
    assert round_num == 4
    _assert_bitwise(state, _state(scale=4))
    (warning,) = caught
    message = str(warning.message)
    assert "round 6" in message and name in message and reason in message, message
    assert "\n" not in message
    with pytest.warns(CheckpointSkippedWarning):
        _assert_bitwise(restore_state(tmp_path, _state()), _state(scale=4))
    with pytest.raises(CorruptCheckpointError, match=f"round 6.*{name}.*{reason}"):
        restore_state(tmp_path, _state(), round_num=6)  # an explicit round never falls back


def test_no_checkpoint_restores_and_mismatch_is_not_skipped(tmp_path):
    for r in (2, 4):
        save_state(tmp_path, _state(scale=r), r)
    _truncate_data(str(tmp_path / "4"))
    other = _state().replace(algorithm_state={"control": jnp.zeros(3)})
    with pytest.raises(CheckpointMismatchError, match="template"):
        restore_newest(tmp_path, other)  # round 2 is whole but written by another process
    _delete_data(str(tmp_path / "2"))
    with pytest.raises(CorruptCheckpointError, match="No checkpoint .* restores.*round 4.*round 2"):
        restore_newest(tmp_path, _state())
    for r in (2, 4):  # without manifests, a mismatch everywhere is still a mismatch
        shutil.rmtree(tmp_path / str(r))
        save_state(tmp_path, _state(scale=r), r)
        os.remove(tmp_path / str(r) / "fedjax_keras_manifest.json")
    with pytest.raises(CheckpointMismatchError, match="template"):
        restore_newest(tmp_path, other)


def test_checkpoint_without_manifest_still_restores(tmp_path):
    save_state(tmp_path, _state(scale=3), 3)
    os.remove(tmp_path / "3" / "fedjax_keras_manifest.json")  # older versions wrote none
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _assert_bitwise(restore_state(tmp_path, _state()), _state(scale=3))


def test_unverified_checkpoint_that_cannot_be_read_is_skipped(tmp_path):
    for r in (2, 4):
        save_state(tmp_path, _state(scale=r), r)
    os.remove(tmp_path / "4" / "fedjax_keras_manifest.json")
    _truncate_data(str(tmp_path / "4"))
    # Cut, its JSON metadata no longer fits the template: an older checkpoint does.
    with pytest.warns(CheckpointSkippedWarning, match=r"round 4 .* cannot be read .*round 2"):
        state, round_num = restore_newest(tmp_path, _state())
    assert round_num == 2
    _assert_bitwise(state, _state(scale=2))


def _fail_meta_write(monkeypatch, error):
    """The orbax save fails while writing the 'meta' item, after the arrays are written."""
    import orbax.checkpoint as ocp

    def fail(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(ocp.handlers.JsonCheckpointHandler, "async_save", fail)


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        # What tensorstore raises when the disk fills under orbax's array writer.
        ValueError(
            'RESOURCE_EXHAUSTED: Error writing local file "x/_sharding": Failed to write 173 '
            "bytes to file 19: No space left on device [os_error_code='28']"
        ),
    ],
    ids=["oserror", "tensorstore"],
)
def test_disk_full_while_saving_keeps_earlier_checkpoints(tmp_path, monkeypatch, error):
    save_state(tmp_path, _state(scale=2), 2)
    _fail_meta_write(monkeypatch, error)
    with pytest.raises(CheckpointDiskFullError) as caught:
        save_state(tmp_path, _state(scale=4), 4)
    full = caught.value
    assert full.errno == errno.ENOSPC and full.round_num == 4
    assert full.directory == os.path.abspath(tmp_path)
    assert full.needed_bytes >= sum(np.asarray(x).nbytes for x in jax.tree.leaves(_state()))
    assert abs(full.free_bytes - shutil.disk_usage(tmp_path).free) < 1 << 24
    assert str(tmp_path) in str(full) and "round 4" in str(full)
    assert sorted(os.listdir(tmp_path)) == ["2"]  # the partial step is gone
    monkeypatch.undo()
    _assert_bitwise(restore_state(tmp_path, _state()), _state(scale=2))


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


@pytest.mark.slow
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
