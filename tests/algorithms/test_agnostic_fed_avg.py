"""Agnostic FedAvg against per-domain losses, client weights and lambda updates by hand."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest
from engine_reference import delta, make_clients, weighted_mean, wrap
from personal_reference import batches_of, sgd

import fedjax_keras as fk
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_agnostic_fed_avg,
    get_algorithm,
    project_simplex,
)
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR, GAMMA = 3, 0.1, 0.5


def _simplex_by_bisection(v):
    """Projection onto the simplex: the theta with sum(max(v - theta, 0)) = 1, by bisection."""
    low, high = v.min() - 1.0, v.max()
    for _ in range(200):
        theta = (low + high) / 2
        low, high = (theta, high) if np.maximum(v - theta, 0).sum() > 1 else (low, theta)
    return np.maximum(v - (low + high) / 2, 0)


def test_project_simplex_against_bisection():
    rng = np.random.default_rng(0)
    cases = [rng.normal(scale=s, size=n) for n in (1, 2, 3, 6) for s in (0.1, 1.0, 5.0)]
    cases += [np.array([0.2, 0.3, 0.5]), np.array([1.0, 1.0]), np.array([10.0, -3.0, 0.0])]
    for v in cases:
        got = np.asarray(project_simplex(jnp.asarray(v, jnp.float32)))
        np.testing.assert_allclose(got, _simplex_by_bisection(v), atol=1e-5)


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=81))


def _sign_of_first_feature(x, y):
    return (x[:, 0] > 0).astype(np.int32)


def _hand(model, cohorts, domains_of, p, update):
    """Stochastic-AFL as FedAvg rounds: per-domain losses of the server model over the round's
    cohort, clients weighted sum_k lambda_k n_ik / N_k with N_k the round's counts."""
    server = model.initial_weights
    weights = np.full(p, 1.0 / p)
    history = []
    for cohort in cohorts:
        clients = [client for _, client in cohort if len(client["y"])]
        sums, seen, per_client = np.zeros(p), np.zeros(p), []
        for client in clients:
            x, y = client["x"], client["y"]
            logits = model.apply(server, x)
            losses = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, y))
            d = np.asarray(domains_of(x, y))
            per_client.append(np.bincount(d, minlength=p))
            sums += np.bincount(d, weights=losses, minlength=p)
            seen += per_client[-1]
        deltas = [delta(sgd(model, server, batches_of(cl, BATCH), LR), server) for cl in clients]
        betas = [float(np.sum(weights * n_i / np.maximum(seen, 1))) for n_i in per_client]
        mean = weighted_mean(deltas, betas)
        server = ModelWeights(
            {k: server.trainable[k] + mean[k] for k in mean}, server.non_trainable
        )
        domain_losses = np.where(seen > 0, sums / np.maximum(seen, 1), 0.0)
        if update == "projected":
            weights = _simplex_by_bisection(weights + GAMMA * domain_losses)
        else:
            weights = weights * np.exp(GAMMA * domain_losses)
            weights = weights / weights.sum()
        history.append((server, weights, seen, domain_losses, betas))
    return history


@pytest.mark.parametrize(
    "update, domain_fn, p",
    [("projected", None, 3), ("exponentiated", _sign_of_first_feature, 2)],
    ids=["labels_projected", "feature_exponentiated"],
)
def test_two_rounds_against_domain_losses_and_weights_by_hand(model, update, domain_fn, p):
    cohort = make_clients([5, 2, 0, 4, 7], seed=82)
    process = build_agnostic_fed_avg(
        model,
        optax.sgd(LR),
        num_domains=None if domain_fn is None else p,
        domain_fn=None if domain_fn is None else lambda x, y: domain_fn(x, y),
        domain_learning_rate=GAMMA,
        domain_update=update,
        batch_size=BATCH,
        shuffle=False,
        runner="vmap",
    )
    state = process.initialize(0)
    labels = lambda x, y: y  # noqa: E731
    history = _hand(model, [cohort, cohort], domain_fn or labels, p, update)
    for server, weights, counts, losses, _ in history:
        out = process.next(state, cohort)
        state = out.state
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(out.metrics["domain_losses"], losses, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(state.algorithm_state["domain_weights"], weights, atol=1e-5)
        np.testing.assert_allclose(state.algorithm_state["domain_counts"], counts)
        assert out.metrics["worst_domain_loss"] == pytest.approx(losses.max(), rel=1e-5)
    assert not np.allclose(weights, 1.0 / p)


def test_registry_entry_lowers_the_worst_domain_loss_over_ten_rounds():
    data = fk.data.synthetic_leaf(num_clients=12, seed=6, size_median=30, num_classes=4)
    model = wrap(toy_models.mlp(60, 16, 4, seed=83), x_shape=(60,))
    entry = get_algorithm("agnostic_fedavg")
    settings = AlgorithmSettings(0.05, None, 12, {**entry.options, "domain_lr": 0.2})
    process = entry.make(model, settings, batch_size=10)
    state = process.initialize(0)
    history = []
    for r in range(10):
        out = process.next(state, data.sample_clients(12, seed=r))
        state = out.state
        history.append(out.metrics)
    assert history[-1]["worst_domain_loss"] < 0.8 * history[0]["worst_domain_loss"]
    weights = history[-1]["domain_weights"]
    assert weights.shape == (4,) and abs(weights.sum() - 1) < 1e-5
    # lambda has moved to the domains the model serves worst.
    worst = set(np.argsort(history[-1]["domain_losses"])[-2:].tolist())
    assert set(np.argsort(weights)[-2:].tolist()) == worst


def _one_label_clients(spec, seed):
    """Clients of one label each (Dirichlet(0.1)-like skew): spec = [(size, label)]."""
    rng = np.random.default_rng(seed)
    return fk.data.FederatedData.from_client_dict(
        {
            f"c{i}": {
                "x": rng.normal(size=(n, 4)).astype(np.float32),
                "y": np.full(n, label, np.int32),
            }
            for i, (n, label) in enumerate(spec)
        }
    )


def test_label_skew_weights_by_this_rounds_counts_and_lambda_stays_on_the_simplex(model):
    """The rule that collapsed under Dirichlet(0.1): round 1's client of 9 examples of label
    1, which round 0 saw once, weighed lambda_1 * 9 / 1 = 3 with the previous round's counts
    against 1/3 for the rest; with the round's own counts no client weighs more than 1."""
    cohorts = [
        _one_label_clients([(8, 0), (1, 1), (6, 2)], seed=84),
        _one_label_clients([(9, 1), (2, 0), (3, 2), (4, 2)], seed=85),
        _one_label_clients([(1, 0), (7, 1), (5, 1)], seed=86),
    ]
    process = build_agnostic_fed_avg(
        model,
        optax.sgd(LR),
        domain_learning_rate=GAMMA,
        batch_size=BATCH,
        shuffle=False,
        runner="sequential",
    )
    state = process.initialize(0)
    labels = lambda x, y: y  # noqa: E731
    for cohort, (server, weights, counts, losses, betas) in zip(
        cohorts, _hand(model, cohorts, labels, 3, "projected")
    ):
        out = process.next(state, cohort)
        state = out.state
        assert max(betas) <= 1.0 + 1e-12 and sum(betas) <= 1.0 + 1e-12
        assert_trees_all_close(state.model, server, rtol=1e-5, atol=1e-6)
        lam = np.asarray(state.algorithm_state["domain_weights"])
        assert np.all(np.isfinite(lam)) and np.all(lam >= 0) and abs(lam.sum() - 1) < 1e-5
        np.testing.assert_allclose(lam, weights, atol=1e-5)
        np.testing.assert_allclose(out.metrics["domain_examples"], counts)
        np.testing.assert_allclose(out.metrics["domain_losses"], losses, rtol=1e-5, atol=1e-6)
        assert out.metrics["first_pass/num_clients"] == len(betas)
