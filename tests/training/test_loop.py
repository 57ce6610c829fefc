"""run_experiment against a plain loop over process.next, and its resume, stop and errors."""

import json
import shutil

import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras as fk
from fedjax_keras.testing import assert_trees_all_close, toy_models
from fedjax_keras.training import Callback, EarlyStopping, run_experiment

TRAIN = make_clients([5, 9, 3, 7, 6, 8])
TEST = make_clients([4, 6], seed=1)
ROUNDS, COHORT, SEED = 5, 3, 7


@pytest.fixture(scope="module")
def process():
    model = wrap(toy_models.mlp())
    return fk.algorithms.build_weighted_fed_avg(
        model, client_optimizer=optax.sgd(0.1), batch_size=4
    )


@pytest.fixture(scope="module")
def plain_loop(process):
    """The reference: process.next by hand, cohorts sampled as documented."""
    evaluator = fk.algorithms.build_fed_eval(process.model)
    state, rows = process.initialize(SEED), []
    for r in range(ROUNDS):
        out = process.next(state, TRAIN.sample_clients(COHORT, seed=[SEED, r]))
        state = out.state
        row = {"round": r + 1, "loss": float(out.metrics["loss"])}
        if (r + 1) % 2 == 0 or r + 1 == ROUNDS:
            weights = process.get_model_weights(state)
            ev = evaluator.next(evaluator.set_model_weights(evaluator.initialize(), weights), TEST)
            row["eval/loss"] = float(ev.metrics["loss"])
        rows.append(row)
    return state, rows


def _run(process, **kwargs):
    options = dict(rounds=ROUNDS, clients_per_round=COHORT, seed=SEED, progress=False)
    options.update(kwargs)
    return run_experiment(process, TRAIN, **options)


def _without_timing(rows):
    return [{k: v for k, v in row.items() if k != "round_seconds"} for row in rows]


def test_equals_a_plain_loop_with_evaluation(process, plain_loop):
    state, history = _run(process, eval_data=TEST, eval_every=2)
    expected_state, expected_rows = plain_loop
    assert_trees_all_close(state.model, expected_state.model, rtol=0, atol=0)
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    for row, expected in zip(history, expected_rows):
        assert row["loss"] == expected["loss"]
        assert row.get("eval/loss") == expected.get("eval/loss")
        assert row["num_clients"] == COHORT and isinstance(row["num_clients"], int)
        assert row["round_seconds"] > 0


class _InterruptAfter(Callback):
    def __init__(self, round_num):
        self.round_num = round_num

    def on_round_end(self, row, state):
        if row["round"] == self.round_num:
            raise KeyboardInterrupt


def test_ctrl_c_saves_the_last_round_and_resume_is_bit_identical(process, plain_loop, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        _run(process, checkpoint_dir=tmp_path, checkpoint_every=10, callbacks=[_InterruptAfter(3)])
    assert fk.checkpoint.latest_round(tmp_path) == 3
    state, history = _run(process, checkpoint_dir=tmp_path, eval_data=TEST, eval_every=2)
    assert_trees_all_close(state.model, plain_loop[0].model, rtol=0, atol=0)
    assert [r["round"] for r in history] == list(range(1, ROUNDS + 1))
    assert [r["loss"] for r in history] == [r["loss"] for r in plain_loop[1]]


def test_a_crash_after_the_checkpoint_replays_the_lost_rounds_once(process, tmp_path):
    straight, straight_rows = _run(process)
    _run(process, checkpoint_dir=tmp_path, checkpoint_every=3)
    # As if killed after round 5 was recorded but before its checkpoint landed.
    shutil.rmtree(tmp_path / "5")
    state, history = _run(process, checkpoint_dir=tmp_path)
    assert_trees_all_close(state.model, straight.model, rtol=0, atol=0)
    assert _without_timing(history) == _without_timing(straight_rows)
    lines = (tmp_path / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["round"] for line in lines] == list(range(1, ROUNDS + 1))


def test_early_stopping_stops_saves_and_resumes_to_the_same_stop(process, tmp_path):
    never_better = EarlyStopping("loss", mode="max", patience=2, min_delta=1e9)
    _, history = _run(process, rounds=50, checkpoint_dir=tmp_path, callbacks=[never_better])
    assert len(history) == 3 and never_better.stopped_round == 3
    assert never_better.best_round == 1
    assert fk.checkpoint.latest_round(tmp_path) == 3
    # A fresh callback on resume rebuilds its wait from the history: one more round.
    again = EarlyStopping("loss", mode="max", patience=2, min_delta=1e9)
    _, resumed = _run(process, rounds=50, checkpoint_dir=tmp_path, callbacks=[again])
    assert len(resumed) == 4 and again.stopped_round == 4


def test_early_stopping_by_hand():
    stop = EarlyStopping("eval/loss", patience=2, min_delta=0.1)
    stop.on_begin(0, [])
    values = [1.0, 0.95, 0.5, 0.45, None, 0.44]
    decisions = [
        stop.on_round_end({"round": i + 1, "eval/loss": v}, None) for i, v in enumerate(values)
    ]
    # 0.95, 0.45 and 0.44 improve by less than min_delta; the None round does not count.
    assert decisions == [None, None, None, None, None, True]
    assert (stop.best, stop.best_round, stop.stopped_round) == (0.5, 3, 6)


def test_a_sampler_instead_of_clients_per_round(process):
    cohorts = []

    def sampler(round_num):
        cohorts.append(round_num)
        return TRAIN.sample_clients(2, seed=round_num)

    _, history = run_experiment(process, rounds=3, sampler=sampler, progress=False)
    assert cohorts == [0, 1, 2] and [r["num_clients"] for r in history] == [2, 2, 2]


def test_progress_lines(process, capsys):
    _run(process, rounds=2, progress=True, eval_data=TEST, eval_every=1)
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith("round 1/2: loss ") and "eval/loss" in lines[0]
    assert lines[1].startswith("round 2/2: ")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"rounds": 0}, ValueError, "rounds must be a positive int"),
        ({"clients_per_round": None}, ValueError, "exactly one of clients_per_round and sampler"),
        ({"sampler": lambda r: TRAIN}, ValueError, "exactly one of"),
        ({"clients_per_round": 2.5}, ValueError, "clients_per_round must be a positive int"),
        ({"eval_every": 0}, ValueError, "eval_every must be a positive int"),
        ({"callbacks": [print]}, TypeError, r"callbacks\[0\] is a builtin_function_or_method"),
    ],
)
def test_bad_arguments(process, kwargs, error, match):
    with pytest.raises(error, match=match):
        _run(process, **kwargs)


def test_checkpoints_are_never_overwritten_or_cut_short(process, tmp_path):
    _run(process, rounds=2, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="holds checkpoints up to round 2; pass resume=True"):
        _run(process, rounds=2, checkpoint_dir=tmp_path, resume=False)
    _run(process, rounds=4, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="have done 4 rounds; expected rounds=4 or more"):
        _run(process, rounds=3, checkpoint_dir=tmp_path)
    assert fk.checkpoint.latest_round(tmp_path) == 4


def test_rows_hold_numbers_and_strings(process):
    _, history = _run(process, rounds=1)
    row = history[0]
    assert isinstance(row["loss"], float) and isinstance(row["runner"], str)
    assert np.isfinite(row["loss"])
