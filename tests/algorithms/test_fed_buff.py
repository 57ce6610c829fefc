"""FedBuff's simulation against a hand loop over model versions (arXiv:2106.06639)."""

import jax
import numpy as np
import optax
import optimization_reference as ref
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
from fedjax_keras.algorithms import (
    AlgorithmSettings,
    build_fed_buff,
    build_unweighted_fed_avg,
    get_algorithm,
)
from fedjax_keras.algorithms._fed_buff import draw_staleness
from fedjax_keras.testing import assert_trees_all_close, toy_models

LR = 0.1


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=81))


@pytest.fixture(scope="module")
def cohort():
    return make_clients([5, 2, 7, 4, 6], seed=82)


def test_staleness_draws_follow_the_probabilities_over_existing_versions():
    probs = jax.numpy.array([0.5, 0.3, 0.2, 0.0])
    keys = jax.random.split(jax.random.PRNGKey(0), 4000)
    for num_older, expected in [(3, [0.5, 0.3, 0.2, 0.0]), (1, [0.625, 0.375, 0.0, 0.0])]:
        draws = np.asarray(
            jax.vmap(draw_staleness, in_axes=(0, None, None))(keys, probs, num_older)
        )
        frequencies = np.bincount(draws, minlength=4) / len(draws)
        np.testing.assert_allclose(frequencies, expected, atol=0.03)
    # Only a version that does not exist has mass: the newest is taken.
    only_old = jax.numpy.array([0.0, 0.0, 1.0])
    assert int(draw_staleness(keys[0], only_old, 0)) == 0


def test_zero_staleness_is_unweighted_fed_avg(model, cohort):
    """tau = 0 always (versions kept but never drawn): FedAvg with uniform weights."""
    options = {"batch_size": ref.BATCH, "shuffle": False, "step_buckets": [3]}
    buff = build_fed_buff(
        model, optax.sgd(LR), max_staleness=2, staleness_probs=[1, 0, 0], **options
    )
    fed_avg = build_unweighted_fed_avg(model, optax.sgd(LR), **options)
    a, b = buff.initialize(0), fed_avg.initialize(0)
    for _ in range(2):
        out = buff.next(a, cohort)
        a, b = out.state, fed_avg.next(b, cohort).state
        assert out.metrics["clients/staleness"].tolist() == [0] * 5
    assert_trees_all_close(a.model, b.model, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def hand_rounds(model, cohort):
    """Three rounds of S = 2, uniform staleness, s(tau) = 1/sqrt(1 + tau), by hand."""
    process = build_fed_buff(
        model,
        optax.sgd(LR),
        max_staleness=2,
        batch_size=ref.BATCH,
        shuffle=False,
        chunk_size=2,
        step_buckets=[3],
    )
    state = process.initialize(4)
    nt = model.initial_weights.non_trainable
    versions = [ref.as64(model.initial_weights.trainable)]
    taus = []
    for t in range(3):
        out = process.next(state, cohort)
        state = out.state
        tau = out.metrics["clients/staleness"]
        taus.append(tau.tolist())
        assert tau.max() <= t
        deltas = []
        for (_, client), k in zip(cohort, tau):
            start = versions[t - int(k)]
            y = ref.sgd(model, start, nt, ref.batches(client), LR)
            deltas.append({key: (y[key] - start[key]) / np.sqrt(1.0 + k) for key in y})
        versions.append(ref.add(versions[t], ref.mean(deltas, np.ones(len(deltas)))))
        assert_trees_all_close(state.model.trainable, versions[-1], rtol=1e-4, atol=1e-5)
        assert out.metrics["mean_staleness"] == pytest.approx(np.mean(tau))
    return state, versions, taus


def test_rounds_equal_the_hand_loop_over_versions(hand_rounds):
    state, versions, taus = hand_rounds
    assert taus[0] == [0] * 5
    assert any(k > 0 for k in taus[1]) and any(k == 2 for k in taus[2])
    # The state keeps x_{t-1}, x_{t-2} for the next round.
    older = state.algorithm_state.older
    assert int(state.algorithm_state.num_older) == 2
    for i, expected in enumerate([versions[2], versions[1]]):
        assert_trees_all_close(jax.tree.map(lambda o, i=i: o[i], older), expected, rtol=1e-4)


def test_sequential_runner_draws_the_same_staleness(model, cohort, hand_rounds):
    """The draw comes from each client's first step key: any executor gives the same run."""
    _, _, taus = hand_rounds
    process = build_fed_buff(
        model,
        optax.sgd(LR),
        max_staleness=2,
        batch_size=ref.BATCH,
        shuffle=False,
        runner="sequential",
    )
    state = process.initialize(4)
    for t in range(3):
        out = process.next(state, cohort)
        state = out.state
        assert out.metrics["clients/staleness"].tolist() == taus[t]
    assert_trees_all_close(state.model, hand_rounds[0].model, rtol=1e-5, atol=1e-6)


def test_bad_options_are_clear_errors(model):
    with pytest.raises(ValueError, match="staleness_probs must be max_staleness \\+ 1 = 3"):
        build_fed_buff(model, optax.sgd(LR), max_staleness=2, staleness_probs=[1.0, 0.0])
    with pytest.raises(ValueError, match="max_staleness must be an int >= 0"):
        build_fed_buff(model, optax.sgd(LR), max_staleness=-1)


def test_registry_entry_improves_on_leaf():
    data, model = ref.leaf_task()
    entry = get_algorithm("fedbuff")
    assert entry.options == {"max_staleness": 4, "staleness_exponent": 0.5}
    settings = AlgorithmSettings(0.05, None, data.num_clients, entry.options)
    process = entry.make(model, settings, **ref.LEAF_ENGINE)
    before = ref.population_loss(model, data, model.initial_weights)
    after = ref.population_loss(model, data, ref.train_rounds(process, data).model)
    assert after < 0.8 * before, (before, after)
