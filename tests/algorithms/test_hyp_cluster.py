"""HypCluster: k = 1 is FedAvg; k = 2 against choices and per-cluster means by hand."""

import jax
import numpy as np
import optax
import pytest
from engine_reference import delta, make_clients, weighted_mean, wrap
from personal_reference import batches_of, eval_loss, sgd

from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_hyp_cluster,
    build_weighted_fed_avg,
    get_algorithm,
    hyp_cluster_models,
)
from fedjax_keras.data import FederatedData
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR = 3, 0.1
OPTIONS = {"batch_size": BATCH, "runner": "vmap"}


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=61))


def test_one_cluster_is_fed_avg(model):
    cohort = make_clients([5, 2, 0, 4, 7], seed=62)
    entry = get_algorithm("hypcluster")
    settings = AlgorithmSettings(LR, None, cohort.num_clients, {**entry.options, "num_clusters": 1})
    mine = entry.make(model, settings, chunk_size=2, **OPTIONS)
    plain = build_weighted_fed_avg(model, optax.sgd(LR), chunk_size=2, **OPTIONS)
    a, b = mine.initialize(5), plain.initialize(5)
    for _ in range(2):
        out = mine.next(a, cohort)
        a, b = out.state, plain.next(b, cohort).state
    assert_trees_all_close(a.model, b.model, rtol=1e-5, atol=1e-7)
    assert out.metrics["clients/cluster"].tolist() == [0] * 5
    assert out.metrics["cluster_clients"].tolist() == [4]


def _hand(model, cohort, clusters, rounds):
    """Per round: (cluster trainables, choices, first-batch losses), written out by hand."""
    non_trainable = model.initial_weights.non_trainable
    history = []
    for _ in range(rounds):
        choices, losses, deltas = [], [], {j: ([], []) for j in range(len(clusters))}
        for _, client in cohort:
            batches = batches_of(client, BATCH)
            if not batches:
                choices.append(0)
                losses.append([np.nan] * len(clusters))
                continue
            first = [
                float(eval_loss(model)(ModelWeights(c, non_trainable), batches[0]))
                for c in clusters
            ]
            j = int(np.argmin(first))
            start = ModelWeights(clusters[j], non_trainable)
            final = sgd(model, start, batches, LR)
            deltas[j][0].append(delta(final, start))
            deltas[j][1].append(len(client["y"]))
            choices.append(j)
            losses.append(first)
        clusters = [
            {k: c[k] + weighted_mean(*deltas[j])[k] for k in c} if deltas[j][0] else c
            for j, c in enumerate(clusters)
        ]
        history.append((clusters, choices, np.array(losses)))
    return history


def test_two_clusters_choose_by_the_first_batch_and_average_per_cluster(model):
    cohort = make_clients([5, 7, 2, 0, 6, 4, 3], seed=63)
    rng = np.random.default_rng(64)
    base = model.initial_weights.trainable
    other = {k: v + rng.normal(scale=0.6, size=v.shape).astype(np.float32) for k, v in base.items()}
    process = build_hyp_cluster(
        model,
        optax.sgd(LR),
        num_clusters=2,
        initial_clusters=[model.initial_weights, other],
        shuffle=False,
        chunk_size=4,
        **OPTIONS,
    )
    state = process.initialize(0)
    chosen = set()
    for clusters, choices, losses in _hand(model, cohort, [dict(base), other], 2):
        out = process.next(state, cohort)
        state = out.state
        got = hyp_cluster_models(state)
        for j, cluster in enumerate(clusters):
            assert_trees_all_close(got[j].trainable, cluster, rtol=1e-5, atol=1e-6)
        trained = cohort.client_sizes > 0
        assert (
            out.metrics["clients/cluster"][trained].tolist() == np.array(choices)[trained].tolist()
        )
        np.testing.assert_allclose(out.metrics["clients/cluster_losses"], losses, rtol=1e-5)
        expected_counts = np.bincount(np.array(choices)[trained], minlength=2)
        assert out.metrics["cluster_clients"].tolist() == expected_counts.tolist()
        chosen.update(np.array(choices)[trained].tolist())
    assert chosen == {0, 1}, "the cohort should exercise both clusters"


def _two_group_task(num_clients=16, n=24, dim=6, seed=65):
    """Half the clients label x by one linear teacher, half by another: two true clusters."""
    rng = np.random.default_rng(seed)
    teachers = rng.normal(size=(2, dim, 3))
    clients = {}
    for c in range(num_clients):
        x = rng.normal(size=(n, dim)).astype(np.float32)
        clients[c] = {"x": x, "y": np.argmax(x @ teachers[c % 2], axis=1).astype(np.int32)}
    return FederatedData.from_client_dict(clients)


def test_separates_two_groups_of_clients_in_ten_rounds():
    """Clusters started from one client of each group (FedJAX starts from trained clients too)."""
    data = _two_group_task()
    model = wrap(toy_models.mlp(6, 8, 3, seed=66), x_shape=(6,))
    starts = [
        sgd(model, model.initial_weights, batches_of(data.client(c), 8, epochs=3), 0.2).trainable
        for c in (0, 1)
    ]
    process = build_hyp_cluster(
        model, optax.sgd(0.2), num_clusters=2, initial_clusters=starts, batch_size=8
    )
    state = process.initialize(0)
    history = []
    for r in range(10):
        out = process.next(state, data.sample_clients(16, seed=r))
        state = out.state
        history.append(out.metrics)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"]
    groups = np.array([cid % 2 for cid in data.sample_clients(16, seed=9).client_ids])
    # One batch of 8 decides: a client or two may pick the other cluster in a round.
    assert np.mean(history[-1]["clients/cluster"] == groups) >= 14 / 16
    assert jax.tree.leaves(state.algorithm_state)[0].shape[0] == 1
