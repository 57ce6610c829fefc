"""The file and TensorBoard callbacks: what they write, read back independently."""

import csv
import json

import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap
from tensorboard_events import events, scalars

import fedjax_keras as fk
from fedjax_keras.testing import toy_models
from fedjax_keras.training import (
    Callback,
    CsvLogger,
    CurvePlot,
    JsonlLogger,
    TensorBoard,
    run_experiment,
)

TRAIN = make_clients([5, 9, 3, 7])
TEST = make_clients([4, 6], seed=1)


@pytest.fixture(scope="module")
def process():
    model = wrap(toy_models.mlp())
    return fk.algorithms.build_weighted_fed_avg(
        model, client_optimizer=optax.sgd(0.1), batch_size=4
    )


def _run(process, rounds, callbacks, checkpoint_dir=None):
    return run_experiment(
        process,
        TRAIN,
        rounds=rounds,
        clients_per_round=2,
        eval_data=TEST,
        eval_every=2,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=2,
        callbacks=callbacks,
        progress=False,
    )


def test_jsonl_and_csv_hold_the_history(process, tmp_path):
    jsonl, table = JsonlLogger(tmp_path / "m.jsonl"), CsvLogger(tmp_path / "m.csv")
    _, history = _run(process, 3, [jsonl, table])
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == history
    with open(tmp_path / "m.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in rows] == [h["loss"] for h in history]
    assert rows[0]["eval/loss"] == "" and float(rows[1]["eval/loss"]) == history[1]["eval/loss"]


def test_resumed_files_hold_each_round_once(process, tmp_path):
    class Crash(Callback):
        def on_round_end(self, row, state):
            if row["round"] == 3:  # recorded, not yet checkpointed (every 2)
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        _run(process, 4, [JsonlLogger(tmp_path / "m.jsonl"), Crash()], tmp_path / "ckpt")
    _, history = _run(process, 4, [JsonlLogger(tmp_path / "m.jsonl")], tmp_path / "ckpt")
    rounds = [json.loads(line)["round"] for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert rounds == [1, 2, 3, 4] == [h["round"] for h in history]


def test_curve_plot_is_a_png(process, tmp_path):
    _run(process, 2, [CurvePlot(tmp_path / "curves.png", metrics=("loss",))])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_scalars_equal_the_history(process, tmp_path):
    _, history = _run(process, 3, [TensorBoard(tmp_path / "tb")])
    found = scalars(tmp_path / "tb")
    assert found["loss"] == [(h["round"], pytest.approx(h["loss"])) for h in history]
    assert [step for step, _ in found["eval/loss"]] == [2, 3]
    assert "runner" not in found and "round" not in found
    np.testing.assert_allclose(
        [v for _, v in found["num_examples"]], [h["num_examples"] for h in history]
    )


def test_tensorboard_after_a_crash_purges_the_lost_rounds(process, tmp_path):
    class Crash(Callback):
        def on_round_end(self, row, state):
            if row["round"] == 3:
                raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        _run(process, 4, [TensorBoard(tmp_path / "tb"), Crash()], tmp_path / "ckpt")
    _, history = _run(process, 4, [TensorBoard(tmp_path / "tb")], tmp_path / "ckpt")
    steps = [step for step, _ in scalars(tmp_path / "tb")["loss"]]
    assert steps == [1, 2, 3, 3, 4]  # the crashed run's files, then the resumed run's
    # The resumed run's restart marker at round 3: TensorBoard then drops the
    # older events from round 3 on (its purge), so each round shows once.
    starts = [e.step for e in events(tmp_path / "tb") if e.session_log.status == 1]
    assert starts == [3]
    assert [h["round"] for h in history] == [1, 2, 3, 4]
