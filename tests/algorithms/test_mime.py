"""Mime (two passes and one) and MimeLite against Algorithm 1 of arXiv:2008.03606 by hand."""

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
    paper_momentum,
)
from fedjax_keras.testing import assert_trees_all_close, toy_models

LR = 0.1


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=51))


@pytest.fixture(scope="module")
def cohorts():
    # Two different cohorts (the one-pass variant's control variate in round 1 is round
    # 0's cohort's full-batch gradient, the two-pass one's round 1's). Partial batches and
    # an empty client.
    return [make_clients([5, 2, 0, 7], seed=52), make_clients([4, 6], seed=53)]


def _hand_mime(model, cohorts, beta, variant):
    """Algorithm 1 of arXiv:2008.03606 with base SGD(LR) and the paper's damped momentum
    ``m <- (1 - beta) g + beta m``: [(x, s, c, anchor)] per round.

    variant: 'two_pass' (c from this round's cohort at x, the paper's), 'previous_round'
    (c from the previous round, anchored at x_prev) or None (MimeLite).
    """
    nt = model.initial_weights.non_trainable
    x = ref.as64(model.initial_weights.trainable)
    s = {k: np.zeros_like(v) for k, v in x.items()}  # optax.ema's buffer
    c = anchor = None
    history = []
    for cohort in cohorts:
        sizes = [int(n) for n in cohort.client_sizes]
        clients = [client for (_, client), n in zip(cohort, sizes) if n]
        weights = [n for n in sizes if n]
        full = [ref.full_gradient(model, x, nt, cl) for cl in clients]
        g_mean = ref.mean(full, weights)
        if variant == "two_pass":
            c, anchor = g_mean, x  # the first pass, before any local step

        def direction(g, y, batch, x=x, s=s, c=c, anchor=anchor):
            if variant is not None and c is not None:
                g_anchor = ref.gradient(model, anchor, nt, batch)
                g = {k: g[k] - g_anchor[k] + c[k] for k in g}
            return {k: (1 - beta) * g[k] + beta * s[k] for k in g}  # U(d, s) / LR, s frozen

        deltas = [
            ref.sub(ref.sgd(model, x, nt, ref.batches(cl), LR, direction), x) for cl in clients
        ]
        s = {k: (1 - beta) * g_mean[k] + beta * s[k] for k in s}
        c, anchor = g_mean, x
        x = ref.add(x, ref.mean(deltas, weights))
        history.append((x, s, c, anchor))
    return history


@pytest.mark.parametrize(
    "variant, beta, runner",
    [
        ("two_pass", 0.9, "vmap"),
        ("two_pass", 0.0, "sequential"),
        ("previous_round", 0.9, "vmap"),
        (None, 0.9, "sequential"),
    ],
    ids=["mime_momentum", "mime_no_momentum_sequential", "mime_previous_round", "mime_lite"],
)
def test_rounds_equal_the_hand_computation(model, cohorts, variant, beta, runner):
    if variant is None:
        build, extra = build_mime_lite, {}
    else:
        build, extra = build_mime, {"control_variate": variant}
    process = build(
        model,
        paper_momentum(LR, beta),
        **extra,
        batch_size=ref.BATCH,
        shuffle=False,
        chunk_size=2,
        step_buckets=[3],
        runner=runner,
    )
    state = process.initialize(0)
    for cohort, (x, s, c, anchor) in zip(cohorts, _hand_mime(model, cohorts, beta, variant)):
        out = process.next(state, cohort)
        state = out.state
        assert_trees_all_close(state.model.trainable, x, rtol=1e-4, atol=1e-5)
        assert_trees_all_close(state.optimizer_state[0][0].ema, s, rtol=1e-4, atol=1e-5)
        if variant is not None:
            assert_trees_all_close(state.algorithm_state.control, c, rtol=1e-4, atol=1e-5)
        if variant == "previous_round":
            assert_trees_all_close(state.algorithm_state.anchor, anchor, rtol=1e-6, atol=1e-7)
            assert bool(state.algorithm_state.has_control)
        if variant == "two_pass":
            assert state.algorithm_state.anchor == ()
            assert not bool(state.algorithm_state.has_control)  # consumed by its round
            assert out.metrics["first_pass/num_clients"] == int(np.sum(cohort.client_sizes > 0))
    expected_norm = np.sqrt(sum(np.sum(v**2) for v in c.values()))
    np.testing.assert_allclose(out.metrics["full_gradient_norm"], expected_norm, rtol=1e-4)


def test_first_pass_reports_the_server_models_loss(model, cohorts):
    process = build_mime(model, paper_momentum(LR), batch_size=ref.BATCH, shuffle=False)
    out = process.next(process.initialize(0), cohorts[0])
    losses, counts = [], []
    for (_, client), n in zip(cohorts[0], cohorts[0].client_sizes):
        for batch in ref.batches(client) if n else []:
            losses.append(float(model.loss(model.initial_weights, batch, training=True)))
            counts.append(len(batch["y"]))
    np.testing.assert_allclose(
        out.metrics["first_pass/loss"], np.average(losses, weights=counts), rtol=1e-5
    )
    assert out.metrics["first_pass/num_examples"] == sum(counts) == out.metrics["num_examples"]


@pytest.mark.parametrize(
    "build, extra", [(build_mime, {"control_variate": "previous_round"}), (build_mime_lite, {})]
)
def test_first_round_without_momentum_is_fed_avg(model, cohorts, build, extra):
    """No control variate yet and s = 0: the one-pass variants' first round is FedAvg's."""
    mime = build(model, optax.sgd(LR), **extra, batch_size=ref.BATCH, shuffle=False)
    fed_avg = build_weighted_fed_avg(model, optax.sgd(LR), batch_size=ref.BATCH, shuffle=False)
    a = mime.next(mime.initialize(0), cohorts[0]).state.model
    b = fed_avg.next(fed_avg.initialize(0), cohorts[0]).state.model
    assert_trees_all_close(a, b, rtol=1e-6, atol=1e-7)


def test_paper_momentum_is_damped():
    """m <- (1 - beta) g + beta m, step -lr m (optax's sgd would step -lr (g + beta m))."""
    opt = paper_momentum(0.5, 0.9)
    params = {"w": np.zeros(2, np.float32)}
    state = opt.init(params)
    m = np.zeros(2)
    for g in (np.array([1.0, -2.0]), np.array([3.0, 0.5])):
        update, state = opt.update({"w": g.astype(np.float32)}, state, params)
        m = 0.1 * g + 0.9 * m
        np.testing.assert_allclose(update["w"], -0.5 * m, rtol=1e-6)


def test_registry_default_base_is_the_papers_damped_momentum(model, cohorts):
    """One round of the registry's Mime: s = (1 - 0.9) c, not c, after the first round."""
    entry = get_algorithm("mime")
    settings = AlgorithmSettings(LR, None, 4, entry.options)
    process = entry.make(model, settings, batch_size=ref.BATCH, shuffle=False)
    state = process.next(process.initialize(0), cohorts[0]).state
    c = state.algorithm_state.control
    assert_trees_all_close(
        state.optimizer_state[0][0].ema, {k: 0.1 * v for k, v in c.items()}, rtol=1e-5, atol=1e-7
    )


def test_unknown_control_variate_is_refused(model):
    with pytest.raises(ValueError, match="control_variate must be one of"):
        build_mime(model, paper_momentum(LR), control_variate="one_pass")


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
