"""median, trimmed_mean, krum against numpy/scipy; stacked rows in the engine."""

import jax
import numpy as np
import optax
import pytest
import scipy.stats
from aggregator_helpers import contributions, run_round
from engine_reference import SGD, delta, local_train, make_clients, sliced_batches, wrap

import fedjax_keras
from fedjax_keras.aggregation import krum, median, trimmed_mean
from fedjax_keras.testing import assert_trees_all_close, toy_models

RNG = np.random.default_rng(0)
VALUES = {"a": RNG.normal(size=(9, 3)), "b": RNG.normal(size=(9, 2, 2)) * 5}
VALUES["a"][2] = [1e6, -1e6, 3e5]  # an outlier


def _split(values, keep=None, parts=(4, 5)):
    """Two chunks with their own slots, as the engine passes them."""
    chunks, start = [], 0
    for size in parts:
        part = {k: v[start : start + size] for k, v in values.items()}
        chunk_keep = None if keep is None else keep[start : start + size]
        chunks.append(contributions(part, keep=chunk_keep, slots=np.arange(start, start + size)))
        start += size
    return chunks


@pytest.mark.parametrize("count", [9, 8])  # odd and even
def test_median_is_numpys(count):
    values = {k: v[:count] for k, v in VALUES.items()}
    value, *_ = run_round(median(), _split(values, parts=(4, count - 4)))
    for k in values:
        np.testing.assert_allclose(value[k], np.median(values[k], axis=0), rtol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.34, 0.49])
def test_trimmed_mean_is_scipys(beta):
    value, _, metrics, _ = run_round(trimmed_mean(beta), _split(VALUES))
    for k in VALUES:
        want = scipy.stats.trim_mean(VALUES[k], beta, axis=0)
        np.testing.assert_allclose(value[k], want, rtol=1e-5, atol=1e-5)
    assert int(metrics["trimmed_per_side"]) == int(beta * 9)


@pytest.mark.parametrize("aggregator", [median, lambda: trimmed_mean(0.2)])
def test_dropped_nan_clients_and_padding_slots_are_ignored(aggregator):
    values = {k: v.copy() for k, v in VALUES.items()}
    values["b"][5] = np.nan
    keep = np.ones(9, bool)
    keep[[5, 7]] = False
    # Slots of a capacity of 12: the padding clients' slot is out of range.
    chunks = _split(values, keep)
    value, *_ = run_round(aggregator(), chunks, capacity=12)
    kept = {k: v[keep] for k, v in VALUES.items()}
    want, *_ = run_round(aggregator(), [contributions(kept)])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), value, want)
    padding = contributions(values, keep=np.zeros(9, bool), slots=np.full(9, 2**31 - 1))
    again, *_ = run_round(aggregator(), chunks + [padding], capacity=12)
    jax.tree.map(np.testing.assert_array_equal, again, value)


def test_no_kept_client_aggregates_to_zeros():
    for aggregator in (median(), trimmed_mean(0.1), krum(1)):
        value, *_ = run_round(aggregator, [contributions(VALUES, keep=np.zeros(9, bool))])
        for leaf in jax.tree.leaves(value):
            np.testing.assert_array_equal(leaf, np.zeros_like(leaf))


def _krum_by_hand(flat, f, m):
    n = len(flat)
    distances = ((flat[:, None, :] - flat[None, :, :]) ** 2).sum(-1)
    scores = [np.sort(np.delete(distances[i], i))[: n - f - 2].sum() for i in range(n)]
    return flat[np.argsort(scores)[:m]].mean(axis=0)


@pytest.mark.parametrize("f, m", [(2, 1), (2, 3), (1, 9)])
def test_krum_and_multi_krum_by_hand(f, m):
    value, _, metrics, _ = run_round(krum(f, m), _split(VALUES))
    flat = np.concatenate([VALUES["a"], VALUES["b"].reshape(9, -1)], axis=1)
    want = _krum_by_hand(flat, f, m)
    got = np.concatenate([value["a"], value["b"].reshape(-1)])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert int(metrics["krum/selected"]) == m
    if m < 9:
        assert abs(got[0]) < 100  # the outlier is never selected


def test_median_in_a_process_is_the_median_of_the_clients_deltas():
    model = wrap(toy_models.mlp(seed=11))
    cohort = make_clients([5, 2, 4, 3, 6], seed=12)
    process = fedjax_keras.algorithms.build_weighted_fed_avg(
        model, optax.sgd(0.1), aggregator=median(), batch_size=3, shuffle=False, chunk_size=2
    )
    out = process.next(process.initialize(0), cohort)
    server = model.initial_weights
    deltas = [
        delta(local_train(model, server, sliced_batches(c["x"], c["y"], 3), SGD), server)
        for _, c in cohort
    ]
    want = {
        k: np.asarray(server.trainable[k]) + np.median([d[k] for d in deltas], axis=0)
        for k in deltas[0]
    }
    assert_trees_all_close(out.state.model.trainable, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: trimmed_mean(0.5), "beta must be a fraction in"),
        (lambda: trimmed_mean(-0.1), "beta must be a fraction in"),
        (lambda: krum(-1), "num_byzantine must be an int"),
        (lambda: krum(1, 0), "num_selected must be an int"),
    ],
)
def test_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
