"""Learning-rate schedules across rounds, client and server, against hand loops."""

import jax
import keras
import numpy as np
import optax
import optimization_reference as ref
import pytest
from compile_counter import CompileCounter
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
from fedjax_keras.algorithms import build_fed_prox, build_weighted_fed_avg
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH = 3
SIZES = [5, 2, 7]


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=31))


@pytest.fixture(scope="module")
def cohort():
    return make_clients(SIZES, seed=32)


def _hand_fed_avg_round(model, server, cohort, client_lr, server_lr):
    """One FedAvg round written out: unshuffled local SGD, example-weighted mean, server SGD."""
    x = ref.as64(server.trainable)
    deltas = [
        ref.sub(ref.sgd(model, x, server.non_trainable, ref.batches(c), client_lr), x)
        for _, c in cohort
    ]
    mean = ref.mean(deltas, cohort.client_sizes)
    return ModelWeights(ref.add(x, mean, server_lr), server.non_trainable)


def test_client_schedule_uses_the_rounds_learning_rate(model, cohort):
    """Rounds 0, 1, 2 train their clients with schedule(0), schedule(1), schedule(2)."""
    schedule = optax.exponential_decay(0.2, transition_steps=1, decay_rate=0.5)
    process = build_weighted_fed_avg(
        model,
        optax.sgd,
        client_learning_rate_schedule=schedule,
        batch_size=BATCH,
        shuffle=False,
    )
    state = process.initialize(0)
    server = model.initial_weights
    for round_num in range(3):
        state = process.next(state, cohort).state
        server = _hand_fed_avg_round(model, server, cohort, float(schedule(round_num)), 1.0)
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)
    # A constant learning rate would end elsewhere: the schedule really acted.
    constant = _hand_fed_avg_round(model, model.initial_weights, cohort, 0.2, 1.0)
    constant = _hand_fed_avg_round(model, constant, cohort, 0.2, 1.0)
    constant = _hand_fed_avg_round(model, constant, cohort, 0.2, 1.0)
    assert not np.allclose(constant.trainable["dense_1/kernel"], server.trainable["dense_1/kernel"])


def test_client_schedule_with_momentum_and_fed_prox(model, cohort):
    """The optimizer is rebuilt from the round's rate: optax.sgd with momentum, FedProx mu=0."""
    schedule = lambda round_num: 0.1 / (1.0 + round_num)  # noqa: E731
    process = build_fed_prox(
        model,
        lambda lr: optax.sgd(lr, momentum=0.0),
        mu=0.0,
        client_learning_rate_schedule=schedule,
        batch_size=BATCH,
        shuffle=False,
    )
    state = process.initialize(0)
    server = model.initial_weights
    for round_num in range(2):
        state = process.next(state, cohort).state
        server = _hand_fed_avg_round(model, server, cohort, schedule(round_num), 1.0)
    assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)


def test_server_schedule_steps_once_per_round(model, cohort):
    """An optax schedule as the server learning rate: round r uses schedule(r)."""
    schedule = optax.piecewise_constant_schedule(1.0, {1: 0.5, 2: 0.5})  # 1.0, 0.5, 0.25
    process = build_weighted_fed_avg(
        model, optax.sgd(0.1), optax.sgd(schedule), batch_size=BATCH, shuffle=False
    )
    state = process.initialize(0)
    server = model.initial_weights
    for round_num, rate in enumerate([1.0, 0.5, 0.25]):
        assert float(schedule(round_num)) == rate
        state = process.next(state, cohort).state
        server = _hand_fed_avg_round(model, server, cohort, 0.1, rate)
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("runner", ["vmap", "sequential"])
def test_a_client_schedule_does_not_recompile(model, runner):
    """The round number is an array in the broadcast: rounds 2-5 compile nothing."""
    data = make_clients([6, 3, 8, 5, 2, 7], seed=33)
    process = build_weighted_fed_avg(
        model,
        optax.sgd,
        client_learning_rate_schedule=optax.cosine_decay_schedule(0.1, 6),
        batch_size=BATCH,
        chunk_size=2,
        step_buckets=[3],
        runner=runner,
    )
    with CompileCounter() as compiles:
        state = process.initialize(0)
        for round_num in range(6):
            if round_num == 2:
                jax.block_until_ready(state.model)
                warmup = len(compiles.names)
            state = process.next(state, data.sample_clients(4, seed=round_num)).state
        jax.block_until_ready(state.model)
    assert warmup > 0
    assert compiles.names[warmup:] == []


def test_schedule_errors_say_what_to_pass(model):
    with pytest.raises(TypeError, match="learning rate -> optax transform"):
        build_weighted_fed_avg(
            model,
            lambda: keras.optimizers.SGD(0.1),
            client_learning_rate_schedule=lambda r: 0.1,
        )
    with pytest.raises(TypeError, match="client_learning_rate_schedule must be a function"):
        build_weighted_fed_avg(model, optax.sgd, client_learning_rate_schedule=0.1)
