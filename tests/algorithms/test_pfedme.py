"""pFedMe against its inner and outer updates written out by hand."""

import numpy as np
import optax
import pytest
from engine_reference import delta, make_clients, weighted_mean, wrap
from personal_reference import batches_of, eval_loss, loss_grad

import fedjax_keras as fk
from fedjax_keras.algorithms import AlgorithmSettings, build_pfedme, get_algorithm
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, ETA, LAM, PLR, K = 3, 0.05, 4.0, 0.1, 3
SIZES = [7, 2, 0, 5]


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=51))


def _hand_client(model, server, client):
    """(final local weights, [(loss of theta before its inner steps, examples)] per batch)."""
    grad = loss_grad(model)
    w = dict(server.trainable)
    theta = dict(w)
    losses = []
    for batch in batches_of(client, BATCH):
        losses.append(
            (eval_loss(model)(ModelWeights(theta, server.non_trainable), batch), len(batch["y"]))
        )
        for _ in range(K):
            g = grad(theta, server.non_trainable, batch)
            theta = {k: theta[k] - PLR * (g[k] + LAM * (theta[k] - w[k])) for k in w}
        w = {k: w[k] - ETA * LAM * (w[k] - theta[k]) for k in w}
    return ModelWeights(w, server.non_trainable), losses


def test_two_rounds_equal_the_moreau_envelope_updates_by_hand(model):
    cohort = make_clients(SIZES, seed=52)
    beta = 1.5
    process = build_pfedme(
        model,
        ETA,
        optax.sgd(beta),
        lam=LAM,
        personal_learning_rate=PLR,
        inner_steps=K,
        batch_size=BATCH,
        shuffle=False,
        runner="vmap",
    )
    state = process.initialize(0)
    server = model.initial_weights
    for _ in range(2):
        out = process.next(state, cohort)
        state = out.state
        finals = [_hand_client(model, server, c) for _, c in cohort]
        sizes = [int(n) for n in cohort.client_sizes]
        kept = [i for i, n in enumerate(sizes) if n]
        mean = weighted_mean([delta(finals[i][0], server) for i in kept], [sizes[i] for i in kept])
        server = ModelWeights(
            {k: server.trainable[k] + beta * mean[k] for k in mean}, server.non_trainable
        )
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)
        pairs = [pair for _, losses in finals for pair in losses]
        expected_loss = sum(float(loss) * n for loss, n in pairs) / sum(n for _, n in pairs)
        assert out.metrics["loss"] == pytest.approx(expected_loss, rel=1e-5)


def test_registry_entry_improves_over_ten_rounds():
    data = fk.data.synthetic_leaf(num_clients=12, seed=4, size_median=30)
    model = wrap(toy_models.mlp(60, 16, 10, seed=53), x_shape=(60,))
    entry = get_algorithm("pfedme")
    settings = AlgorithmSettings(0.05, None, 12, {**entry.options, "personal_lr": 0.02})
    process = entry.make(model, settings, batch_size=10)
    state = process.initialize(0)
    losses = []
    for r in range(10):
        out = process.next(state, data.sample_clients(12, seed=r))
        state = out.state
        losses.append(out.metrics["loss"])
    assert losses[-1] < 0.8 * losses[0]
    assert np.all(np.isfinite(losses))
