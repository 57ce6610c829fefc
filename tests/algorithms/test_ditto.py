"""Ditto against hand-written proximal SGD, FedAvg, and itself under another executor."""

import jax
import numpy as np
import optax
import pytest
from engine_reference import delta, make_clients, weighted_mean, wrap
from personal_reference import batches_of, sgd

import fedjax_keras as fk
from fedjax_keras.algorithms import AlgorithmSettings, build_ditto, get_algorithm
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR = 3, 0.1
SIZES = [24, 2, 0, 21]  # 8, 1, 0 and 7 steps, a partial batch and an empty client


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=21))


@pytest.fixture(scope="module")
def cohort():
    return make_clients(SIZES, seed=22)


def _hand_ditto(model, cohort, lam, rounds):
    """Per round: (server weights, personal weights by client), by proximal SGD written out."""
    server = model.initial_weights
    personal = {cid: model.initial_weights for cid in cohort.client_ids}
    history = []
    for _ in range(rounds):
        deltas, sizes = [], []
        for cid, client in cohort:
            if len(client["y"]) == 0:
                continue
            batches = batches_of(client, BATCH)
            final = sgd(model, server, batches, LR)
            deltas.append(delta(final, server))
            sizes.append(len(client["y"]))
            anchor = server.trainable
            pull = lambda v, anchor=anchor: {k: lam * (v[k] - anchor[k]) for k in v}  # noqa: E731
            personal[cid] = sgd(model, personal[cid], batches, LR, pull)
        mean = weighted_mean(deltas, sizes)
        server = ModelWeights(
            {k: server.trainable[k] + mean[k] for k in mean}, server.non_trainable
        )
        history.append((server, dict(personal)))
    return history


def _ditto(model, lam, **options):
    settings = {"batch_size": BATCH, "shuffle": False, "runner": "vmap", **options}
    return build_ditto(model, optax.sgd(LR), lam=lam, **settings)


def _stored(state, cohort):
    return state.client_states.gather(cohort.population_positions)["algorithm"]


def _stacked(rows):
    return jax.tree.map(lambda *leaves: np.stack(leaves), *rows)


LAMS = (0.0, 10.0)  # with LR 0.1, lam = 10 gives lam * LR = 1: v <- w - LR * grad f(v)


@pytest.fixture(scope="module")
def runs(model, cohort):
    """Per lam, per round: (server weights, personal rows [cohort], metrics) from the engine."""
    result = {}
    for lam in LAMS:
        process = _ditto(model, lam)
        state, rounds = process.initialize(0), []
        for _ in range(2):
            out = process.next(state, cohort)
            state = out.state
            rounds.append((state.model, _stored(state, cohort), out.metrics))
        result[lam] = (rounds, state.client_states.seen_positions().tolist())
    return result


@pytest.mark.parametrize("lam", LAMS)
def test_two_rounds_equal_proximal_sgd_by_hand(model, cohort, runs, lam):
    rounds, seen = runs[lam]
    for (server, personal), (got_server, got_personal, _) in zip(
        _hand_ditto(model, cohort, lam, 2), rounds
    ):
        assert_trees_all_close(got_server, server, rtol=1e-5, atol=1e-6)
        expected = _stacked([personal[cid] for cid in cohort.client_ids])
        assert_trees_all_close(got_personal, expected, rtol=1e-5, atol=1e-6)
    if lam == 0.0:
        # lam = 0 and v = w^0 in round 1: the personal trajectory is the global copy's.
        metrics = rounds[0][2]
        assert metrics["personal/loss"] == pytest.approx(metrics["loss"], rel=1e-6)
    # The empty client was never written: it reads the initial weights.
    assert seen == [0, 1, 3]


def test_lam_zero_drifts_and_a_large_lam_tracks_the_global_model(cohort, runs):
    """Round 2's personal models against the weights they were pulled toward (round 1's)."""

    def distances(lam):
        rounds, _ = runs[lam]
        anchor, (_, personal, _) = rounds[0][0], rounds[1]
        return np.sqrt(
            sum(
                np.sum((np.asarray(personal.trainable[k]) - np.asarray(w)).reshape(4, -1) ** 2, 1)
                for k, w in anchor.trainable.items()
            )
        )

    trained = cohort.client_sizes > 0
    local, tracking = distances(0.0)[trained], distances(10.0)[trained]
    assert np.all(tracking < 0.4 * local), (tracking, local)


def test_vmap_and_sequential_runners_give_the_same_numbers(model):
    cohort = make_clients([4, 5, 6, 3], seed=23)  # two chunks of 2 steps
    states = {}
    for runner in ("vmap", "sequential"):
        process = _ditto(model, 0.5, runner=runner, chunk_size=2, shuffle=True)
        state = process.initialize(3)
        for _ in range(2):
            out = process.next(state, cohort)
            state = out.state
        states[runner] = (state.model, _stored(state, cohort), out.metrics["personal/loss"])
    assert_trees_all_close(states["vmap"], states["sequential"], rtol=1e-5, atol=1e-6)


def test_registry_entry_builds_ditto_and_personal_models_beat_the_global_one():
    """10 rounds on heterogeneous LEAF Synthetic: the personal models fit their clients."""
    data = fk.data.synthetic_leaf(num_clients=12, seed=1, size_median=30)
    model = wrap(toy_models.mlp(60, 16, 10, seed=24), x_shape=(60,))
    entry = get_algorithm("ditto")
    settings = AlgorithmSettings(0.05, None, data.num_clients, {**entry.options, "lam": 0.05})
    process = entry.make(model, settings, batch_size=10, runner="vmap")
    state = process.initialize(0)
    history = []
    for r in range(10):
        out = process.next(state, data.sample_clients(12, seed=r))
        state = out.state
        history.append(out.metrics)
    assert history[-1]["personal/loss"] < 0.7 * history[0]["personal/loss"]
    assert history[-1]["loss"] < history[0]["loss"]
    assert history[-1]["personal/loss"] < history[-1]["loss"]
    per_client = history[-1]["clients/personal/loss"]
    assert per_client.shape == (12,) and np.all(np.isfinite(per_client))
