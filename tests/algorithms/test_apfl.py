"""APFL against its update rules written out by hand (fixed and adaptive alpha)."""

import numpy as np
import pytest
from engine_reference import delta, make_clients, weighted_mean, wrap
from personal_reference import batches_of, loss_grad, sgd

import fedjax_keras as fk
from fedjax_keras.algorithms import AlgorithmSettings, build_apfl, get_algorithm
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR = 3, 0.1
SIZES = [7, 2, 0, 5]


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=31))


@pytest.fixture(scope="module")
def cohort():
    return make_clients(SIZES, seed=32)


def _hand_client(model, server, personal, alpha, alpha_lr, batches):
    """APFL's local steps on one client, every right-hand side taken before the step."""
    grad = loss_grad(model)
    w, v = dict(server.trainable), dict(personal)
    for batch in batches:
        g_w = grad(w, server.non_trainable, batch)
        mixed = {k: alpha * v[k] + (1 - alpha) * w[k] for k in w}
        g = grad(mixed, server.non_trainable, batch)
        slope = sum(float(np.vdot(np.asarray(v[k] - w[k]), np.asarray(g[k]))) for k in w)
        w, v = {k: w[k] - LR * g_w[k] for k in w}, {k: v[k] - LR * alpha * g[k] for k in w}
        if alpha_lr:
            alpha = float(np.clip(alpha - alpha_lr * slope, 0.0, 1.0))
    return ModelWeights(w, server.non_trainable), v, alpha


def _hand_apfl(model, cohort, alpha0, alpha_lr, rounds):
    server = model.initial_weights
    rows = {cid: (dict(server.trainable), alpha0) for cid in cohort.client_ids}
    history = []
    for _ in range(rounds):
        deltas, sizes = [], []
        for cid, client in cohort:
            if len(client["y"]) == 0:
                continue
            final, v, a = _hand_client(
                model, server, *rows[cid], alpha_lr, batches_of(client, BATCH)
            )
            rows[cid] = (v, a)
            deltas.append(delta(final, server))
            sizes.append(len(client["y"]))
        mean = weighted_mean(deltas, sizes)
        server = ModelWeights(
            {k: server.trainable[k] + mean[k] for k in mean}, server.non_trainable
        )
        history.append((server, dict(rows)))
    return history


@pytest.mark.parametrize("alpha, alpha_lr", [(1.0, 0.0), (0.5, 0.3)], ids=["fixed_one", "adaptive"])
def test_two_rounds_equal_the_update_rules_by_hand(model, cohort, alpha, alpha_lr):
    process = build_apfl(
        model,
        LR,
        alpha=alpha,
        alpha_learning_rate=alpha_lr,
        batch_size=BATCH,
        shuffle=False,
        runner="vmap",
    )
    state = process.initialize(0)
    for server, rows in _hand_apfl(model, cohort, alpha, alpha_lr, 2):
        out = process.next(state, cohort)
        state = out.state
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)
        stored = state.client_states.gather(cohort.population_positions)["algorithm"]
        for position, cid in enumerate(cohort.client_ids):
            v, a = rows[cid]
            got = {k: np.asarray(leaf[position]) for k, leaf in stored["personal"].items()}
            assert_trees_all_close(got, v, rtol=1e-5, atol=1e-6)
            assert float(stored["alpha"][position]) == pytest.approx(a, abs=1e-6)
        trained = cohort.client_sizes > 0
        expected_alpha = [rows[cid][1] for cid in cohort.client_ids]
        np.testing.assert_allclose(
            out.metrics["clients/alpha"][trained], np.array(expected_alpha)[trained], atol=1e-6
        )
    if alpha_lr:
        assert any(abs(rows[cid][1] - alpha) > 1e-3 for cid in cohort.client_ids)
    else:
        # alpha = 1: v_k is local training, two rounds of plain SGD from w^0.
        for position, (_, client) in enumerate(cohort):
            local = model.initial_weights
            for _ in range(2):
                local = sgd(model, local, batches_of(client, BATCH), LR)
            got = {k: np.asarray(leaf[position]) for k, leaf in stored["personal"].items()}
            assert_trees_all_close(got, local.trainable, rtol=1e-5, atol=1e-6)


def test_registry_entry_and_the_mixed_models_improve_over_ten_rounds():
    data = fk.data.synthetic_leaf(num_clients=12, seed=2, size_median=30)
    model = wrap(toy_models.mlp(60, 16, 10, seed=33), x_shape=(60,))
    entry = get_algorithm("apfl")
    options = {**entry.options, "mix": 0.5, "mix_lr": 0.05}
    process = entry.make(model, AlgorithmSettings(0.05, None, 12, options), batch_size=10)
    state = process.initialize(0)
    history = []
    for r in range(10):
        out = process.next(state, data.sample_clients(12, seed=r))
        state = out.state
        history.append(out.metrics)
    assert history[-1]["personal/loss"] < 0.7 * history[0]["personal/loss"]
    assert history[-1]["personal/loss"] < history[-1]["loss"]
    assert np.all((history[-1]["clients/alpha"] >= 0) & (history[-1]["clients/alpha"] <= 1))
