"""Sweeps: K runs vmapped in one program equal K separate runs, and compile once."""

import numpy as np
import optax
import pytest
from compile_counter import CompileCounter
from engine_reference import make_clients, wrap

import fedjax_keras as fk
from fedjax_keras.algorithms import build_fed_prox, build_weighted_fed_avg
from fedjax_keras.testing import assert_trees_all_close, toy_models

SEEDS = [0, 1, 2]
CLIENT_LRS = [0.05, 0.1, 0.2]
SERVER_LRS = [1.0, 0.5, 1.0]
ENGINE = {"batch_size": 3, "chunk_size": 4, "runner": "vmap"}


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(dropout=0.5, seed=91))


@pytest.fixture(scope="module")
def data():
    return make_clients([6, 3, 8, 5, 2, 7, 4, 6, 9, 1], seed=92)


def _sgd(learning_rate):
    # The rate as optimizer state, not a constant of the program: the separate runs
    # of every k compile one set of programs (loaded from the run's compilation cache).
    return optax.inject_hyperparams(optax.sgd)(learning_rate=learning_rate)


def _separate(model, data, k, cohorts, build=build_weighted_fed_avg, **kwargs):
    process = build(model, _sgd(CLIENT_LRS[k]), _sgd(SERVER_LRS[k]), **ENGINE, **kwargs)
    state = process.initialize(SEEDS[k])
    for cohort in cohorts:
        out = process.next(state, cohort)
        state = out.state
    return out


@pytest.mark.parametrize("per_run_cohorts", [False, True])
def test_each_run_equals_a_separate_run(model, data, per_run_cohorts):
    sweep = fk.sweep(
        lambda c, s: build_weighted_fed_avg(model, c, s, **ENGINE), SEEDS, CLIENT_LRS, SERVER_LRS
    )
    states = sweep.initialize()

    def cohorts_of(k):
        seed = SEEDS[k] if per_run_cohorts else 0
        return [data.sample_clients(5, seed=[seed, r]) for r in range(3)]

    for r in range(3):
        cohorts = [cohorts_of(k)[r] for k in range(3)] if per_run_cohorts else cohorts_of(0)[r]
        out = sweep.next(states, cohorts)
        states = out.state
    assert out.metrics["loss"].shape == (3,)
    for k in range(3):
        alone = _separate(model, data, k, cohorts_of(k))
        assert_trees_all_close(sweep.run_state(states, k).model, alone.state.model, 1e-5, 1e-6)
        assert out.metrics["loss"][k] == pytest.approx(alone.metrics["loss"], rel=1e-5)
        assert int(sweep.run_state(states, k).round_num) == 3


def test_runs_whose_cohorts_batch_to_different_widths(model, data):
    # Clients of 2 and 1 examples batch 2 wide (under batch_size 3); clients of 6 and 8, 3 wide.
    cohorts = [data.subset([4, 9]), data.subset([0, 2])]
    sweep = fk.sweep(
        lambda c, s: build_weighted_fed_avg(model, c, s, **ENGINE),
        SEEDS[:2],
        CLIENT_LRS[:2],
        SERVER_LRS[:2],
    )
    out = sweep.next(sweep.initialize(), cohorts)
    for k in range(2):
        alone = _separate(model, data, k, [cohorts[k]])
        assert_trees_all_close(sweep.run_state(out.state, k).model, alone.state.model, 1e-5, 1e-6)
        assert out.metrics["loss"][k] == pytest.approx(alone.metrics["loss"], rel=1e-5)


def test_a_sweep_compiles_once_whatever_the_runs(model, data):
    sweep = fk.sweep(lambda c, s: build_fed_prox(model, c, s, mu=0.1, **ENGINE), SEEDS, CLIENT_LRS)
    states = sweep.initialize()
    with CompileCounter() as compiles:
        for r in range(5):
            states = sweep.next(states, data.sample_clients(5, seed=r)).state
            if r == 1:
                warm = len(compiles.names)
    assert compiles.names[warm:] == []
    alone = _separate(
        model, data, 2, [data.sample_clients(5, seed=r) for r in range(5)], build_fed_prox, mu=0.1
    )
    assert_trees_all_close(sweep.run_state(states, 2).model, alone.state.model, 1e-5, 1e-6)


def test_mistakes_are_named(model, data):
    stepwise = lambda c, s: build_weighted_fed_avg(model, c, s, runner="sequential")  # noqa: E731
    with pytest.raises(ValueError, match="runner='vmap'"):
        fk.sweep(stepwise, [0, 1], 0.1)
    plain = lambda c, s: build_weighted_fed_avg(model, c, s, **ENGINE)  # noqa: E731
    with pytest.raises(ValueError, match="one value per run"):
        fk.sweep(plain, [0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="seeds must be"):
        fk.sweep(plain, [], 0.1)
    sweep = fk.sweep(plain, [0, 1], 0.1)
    with pytest.raises(ValueError, match="one per run"):
        sweep.next(sweep.initialize(), [data, data, data])
    lists = [[{"x": np.zeros((3, 4), np.float32), "y": np.zeros(3, np.int32)}]] * 2
    with pytest.raises(ValueError, match="one FederatedData"):
        sweep.next(sweep.initialize(), lists)
