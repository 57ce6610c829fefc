"""FedDyn against Algorithm 1 of arXiv:2111.04263 written out by hand."""

import jax
import numpy as np
import optax
import optimization_reference as ref
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_fed_dyn,
    build_unweighted_fed_avg,
    get_algorithm,
)
from fedjax_keras.testing import assert_trees_all_close, toy_models

LR, ALPHA = 0.1, 0.5
SIZES = [5, 2, 7, 4, 6]


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=71))


@pytest.fixture(scope="module")
def population():
    return make_clients(SIZES, seed=72)


def _hand_fed_dyn(model, cohorts, m):
    """[(x, h, {client id: g_k})] after each round, in float64."""
    nt = model.initial_weights.non_trainable
    x = ref.as64(model.initial_weights.trainable)
    h = {k: np.zeros_like(v) for k, v in x.items()}
    g_state, history = {}, []
    for cohort in cohorts:
        deltas = []
        for cid, client in cohort:
            gk = g_state.get(cid, {k: np.zeros_like(v) for k, v in x.items()})

            def direction(g, y, batch, gk=gk, x=x):
                return {k: g[k] - gk[k] + ALPHA * (y[k] - x[k]) for k in g}

            y = ref.sgd(model, x, nt, ref.batches(client), LR, direction)
            d = ref.sub(y, x)
            g_state[cid] = {k: gk[k] - ALPHA * d[k] for k in d}
            deltas.append(d)
        h = {k: h[k] - ALPHA / m * sum(d[k] for d in deltas) for k in h}
        mean_y = ref.add(x, ref.mean(deltas, np.ones(len(deltas))))
        x = {k: mean_y[k] - h[k] / ALPHA for k in x}
        history.append((x, h, dict(g_state)))
    return history


@pytest.mark.parametrize("runner", ["vmap", "sequential"])
def test_rounds_equal_algorithm_1(model, population, runner):
    """Three rounds of 3 of 5 clients (some seen twice), two chunks per round."""
    cohorts = [population.sample_clients(3, seed=r) for r in range(3)]
    process = build_fed_dyn(
        model,
        optax.sgd(LR),
        alpha=ALPHA,
        population_size=len(SIZES),
        batch_size=ref.BATCH,
        shuffle=False,
        chunk_size=2,
        step_buckets=[3],
        runner=runner,
    )
    state = process.initialize(0)
    ids = list(population.client_ids)
    for cohort, (x, h, g_state) in zip(cohorts, _hand_fed_dyn(model, cohorts, len(SIZES))):
        state = process.next(state, cohort).state
        assert_trees_all_close(state.model.trainable, x, rtol=1e-4, atol=1e-5)
        assert_trees_all_close(state.algorithm_state.h, h, rtol=1e-4, atol=1e-6)
        seen = sorted(ids.index(cid) for cid in g_state)
        assert state.client_states.seen_positions().tolist() == seen
        stored = state.client_states.gather(np.array(seen))["algorithm"]
        expected = jax.tree.map(lambda *rows: np.stack(rows), *[g_state[ids[p]] for p in seen])
        assert_trees_all_close(stored, expected, rtol=1e-4, atol=1e-6)


def test_small_alpha_trains_like_fed_avg_but_the_server_adds_h(model, population):
    """alpha -> 0: the clients' local SGD is FedAvg's, but h / alpha does not vanish, so with
    the whole population in round 0 the server moves by twice FedAvg's mean delta."""
    options = {"batch_size": ref.BATCH, "shuffle": False}
    dyn = build_fed_dyn(model, optax.sgd(LR), alpha=1e-7, **options)
    fed_avg = build_unweighted_fed_avg(model, optax.sgd(LR), **options)
    x0 = model.initial_weights.trainable
    a = dyn.next(dyn.initialize(0), population).state.model.trainable
    b = fed_avg.next(fed_avg.initialize(0), population).state.model.trainable
    doubled = {k: np.asarray(x0[k]) + 2 * (np.asarray(b[k]) - np.asarray(x0[k])) for k in x0}
    assert_trees_all_close(a, doubled, rtol=1e-4, atol=1e-5)


def test_alpha_must_be_positive(model):
    with pytest.raises(ValueError, match="alpha must be a number > 0"):
        build_fed_dyn(model, optax.sgd(LR), alpha=0.0)


def test_registry_entry_improves_on_leaf():
    data, model = ref.leaf_task()
    entry = get_algorithm("feddyn")
    assert entry.options == {"alpha": 0.01}
    settings = AlgorithmSettings(0.05, None, data.num_clients, entry.options)
    process = entry.make(model, settings, **ref.LEAF_ENGINE)
    before = ref.population_loss(model, data, model.initial_weights)
    after = ref.population_loss(model, data, ref.train_rounds(process, data).model)
    assert after < 0.8 * before, (before, after)
