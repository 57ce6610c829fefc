"""q-FFL: q = 0 is unweighted FedAvg; q = 2 against the q-FedAvg step written out by hand."""

import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap
from personal_reference import batches_of, mean_loss, sgd

import fedjax_keras as fk
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_q_ffl,
    build_unweighted_fed_avg,
    get_algorithm,
)
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR = 3, 0.1
OPTIONS = {"batch_size": BATCH, "shuffle": False, "runner": "vmap"}


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=71))


@pytest.fixture(scope="module")
def cohort():
    return make_clients([5, 2, 0, 4, 7], seed=72)


def test_q_zero_is_unweighted_fed_avg(model, cohort):
    mine, plain = (
        build_q_ffl(model, LR, q=0.0, **OPTIONS),
        build_unweighted_fed_avg(model, optax.sgd(LR), **OPTIONS),
    )
    a, b = mine.initialize(0), plain.initialize(0)
    for _ in range(2):
        a, b = mine.next(a, cohort).state, plain.next(b, cohort).state
    assert_trees_all_close(a.model, b.model, rtol=1e-5, atol=1e-6)


def test_two_rounds_equal_the_q_fedavg_step_by_hand(model, cohort):
    q, lip = 2.0, 1.0 / LR
    entry = get_algorithm("qffl")
    settings = AlgorithmSettings(LR, None, cohort.num_clients, {**entry.options, "q": q})
    process = entry.make(model, settings, **OPTIONS)
    state, server = process.initialize(0), model.initial_weights
    for _ in range(2):
        out = process.next(state, cohort)
        state = out.state
        deltas, hs, losses = [], [], []
        for _, client in cohort:
            if len(client["y"]) == 0:
                continue
            loss = mean_loss(model, server, client)
            final = sgd(model, server, batches_of(client, BATCH), LR)
            dw = {
                k: lip * (np.asarray(server.trainable[k]) - final.trainable[k])
                for k in final.trainable
            }
            deltas.append({k: loss**q * v for k, v in dw.items()})
            hs.append(q * loss ** (q - 1) * sum(np.sum(v**2) for v in dw.values()) + lip * loss**q)
            losses.append(loss)
        trainable = {
            k: server.trainable[k] - sum(d[k] for d in deltas) / sum(hs) for k in server.trainable
        }
        server = ModelWeights(trainable, server.non_trainable)
        assert_trees_all_close(state.model, server, rtol=1e-4, atol=1e-6)
        kept = cohort.client_sizes > 0
        np.testing.assert_allclose(out.metrics["clients/start_loss"][kept], losses, rtol=1e-5)


def test_improves_and_narrows_the_worst_clients_loss_over_ten_rounds():
    data = fk.data.synthetic_leaf(num_clients=12, seed=5, size_median=30)
    model = wrap(toy_models.mlp(60, 16, 10, seed=73), x_shape=(60,))
    process = build_q_ffl(model, 0.05, q=1.0, batch_size=10)
    state = process.initialize(0)
    history = []
    for r in range(10):
        out = process.next(state, data.sample_clients(12, seed=r))
        state = out.state
        history.append(out.metrics)
    first, last = history[0]["clients/start_loss"], history[-1]["clients/start_loss"]
    assert np.mean(last) < 0.8 * np.mean(first)
    assert np.max(last) < np.max(first)
