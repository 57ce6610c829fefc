"""Mime and MimeLite against their update rules written out by hand (arXiv:2008.03606)."""

import numpy as np
import optax
import optimization_reference as ref
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_mime,
    build_mime_lite,
    build_weighted_fed_avg,
    get_algorithm,
)
from fedjax_keras.testing import assert_trees_all_close, toy_models

LR = 0.1


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=51))


@pytest.fixture(scope="module")
def cohorts():
    # Two different cohorts: Mime's control variate in round 1 is round 0's cohort's
    # full-batch gradient. Partial batches and an empty client.
    return [make_clients([5, 2, 0, 7], seed=52), make_clients([4, 6], seed=53)]


def _hand_mime(model, cohorts, rho, control_variate):
    """Algorithm 1 of arXiv:2008.03606 with base SGD(LR, momentum rho), one pass per round,
    c from the previous round anchored where it was computed: [(x, s, c, anchor)] per round."""
    nt = model.initial_weights.non_trainable
    x = ref.as64(model.initial_weights.trainable)
    s = {k: np.zeros_like(v) for k, v in x.items()}  # optax.trace's buffer
    c = anchor = None
    history = []
    for cohort in cohorts:

        def direction(g, y, batch, x=x, s=s, c=c, anchor=anchor):
            if control_variate and c is not None:
                g_anchor = ref.gradient(model, anchor, nt, batch)
                g = {k: g[k] - g_anchor[k] + c[k] for k in g}
            return {k: g[k] + rho * s[k] for k in g}  # U(d, s) / LR with s frozen

        sizes = [int(n) for n in cohort.client_sizes]
        clients = [client for (_, client), n in zip(cohort, sizes) if n]
        deltas = [
            ref.sub(ref.sgd(model, x, nt, ref.batches(cl), LR, direction), x) for cl in clients
        ]
        full = [ref.full_gradient(model, x, nt, cl) for cl in clients]
        weights = [n for n in sizes if n]
        g_mean = ref.mean(full, weights)
        s = {k: g_mean[k] + rho * s[k] for k in s}
        c, anchor = g_mean, x
        x = ref.add(x, ref.mean(deltas, weights))
        history.append((x, s, c, anchor))
    return history


@pytest.mark.parametrize(
    "control_variate, rho, runner",
    [(True, 0.0, "vmap"), (True, 0.9, "sequential"), (False, 0.9, "vmap")],
    ids=["mime_no_momentum", "mime_momentum_sequential", "mime_lite_momentum"],
)
def test_rounds_equal_the_hand_computation(model, cohorts, control_variate, rho, runner):
    build = build_mime if control_variate else build_mime_lite
    base = optax.sgd(LR, momentum=rho or None)
    process = build(
        model,
        base,
        batch_size=ref.BATCH,
        shuffle=False,
        chunk_size=2,
        step_buckets=[3],
        runner=runner,
    )
    state = process.initialize(0)
    for cohort, (x, s, c, anchor) in zip(cohorts, _hand_mime(model, cohorts, rho, control_variate)):
        out = process.next(state, cohort)
        state = out.state
        assert_trees_all_close(state.model.trainable, x, rtol=1e-4, atol=1e-5)
        if rho:
            assert_trees_all_close(state.optimizer_state[0][0].trace, s, rtol=1e-4, atol=1e-5)
        if control_variate:
            assert_trees_all_close(state.algorithm_state.control, c, rtol=1e-4, atol=1e-5)
            assert_trees_all_close(state.algorithm_state.anchor, anchor, rtol=1e-6, atol=1e-7)
            assert bool(state.algorithm_state.has_control)
    expected_norm = np.sqrt(sum(np.sum(v**2) for v in c.values()))
    np.testing.assert_allclose(out.metrics["full_gradient_norm"], expected_norm, rtol=1e-4)


def test_first_round_without_momentum_is_fed_avg(model, cohorts):
    """No control variate yet and s = 0: Mime's first round is FedAvg's."""
    mime = build_mime(model, optax.sgd(LR), batch_size=ref.BATCH, shuffle=False)
    fed_avg = build_weighted_fed_avg(model, optax.sgd(LR), batch_size=ref.BATCH, shuffle=False)
    a = mime.next(mime.initialize(0), cohorts[0]).state.model
    b = fed_avg.next(fed_avg.initialize(0), cohorts[0]).state.model
    assert_trees_all_close(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", ["mime", "mime_lite"])
def test_registry_entry_improves_on_leaf(name):
    data, model = ref.leaf_task()
    entry = get_algorithm(name)
    assert entry.options == {"momentum": 0.9}
    settings = AlgorithmSettings(0.02, None, data.num_clients, entry.options)
    process = entry.make(model, settings, **ref.LEAF_ENGINE)
    before = ref.population_loss(model, data, model.initial_weights)
    after = ref.population_loss(model, data, ref.train_rounds(process, data).model)
    assert after < 0.8 * before, (before, after)
