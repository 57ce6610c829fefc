"""Aggregators: mean and sum by hand, dropped clients, zero weights, chunking, by_key, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_keras  # noqa: F401
from fedjax_keras.aggregation import Aggregator, Contributions, by_key, mean, safe_divide, sum
from fedjax_keras.testing import assert_trees_all_close

UPDATES = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], np.float32)
WEIGHTS = np.array([1.0, 2.0, 5.0], np.float32)
SPEC = {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}


def _contributions(updates=UPDATES, weights=WEIGHTS, keep=None):
    n = len(weights)
    return Contributions(
        values={"w": np.asarray(updates, np.float32)},
        weights=np.asarray(weights, np.float32),
        keep=np.ones(n, bool) if keep is None else np.asarray(keep),
        slots=np.arange(n, dtype=np.int32),
        keys=jax.random.split(jax.random.PRNGKey(0), n),
    )


def _aggregate(aggregator: Aggregator, *chunks, capacity=3):
    state = aggregator.init(SPEC)
    acc = aggregator.start(state, SPEC, capacity)
    for chunk in chunks:
        acc, _ = aggregator.accumulate(acc, state, chunk)
    value, _, metrics = aggregator.finalize(acc, state, jax.random.PRNGKey(1))
    return value, metrics


def test_mean_and_sum_by_hand():
    value, metrics = _aggregate(mean(), _contributions())
    np.testing.assert_allclose(value["w"], [(1 + 6 + 2.5) / 8, (2 - 2 + 2.5) / 8], rtol=1e-6)
    assert metrics == {}
    total, _ = _aggregate(sum(), _contributions())
    np.testing.assert_allclose(total["w"], [4.5, 1.5])


def test_chunk_by_chunk_equals_all_at_once():
    whole, _ = _aggregate(mean(), _contributions())
    parts = [
        jax.tree.map(lambda a, part=part: a[part], _contributions())
        for part in (slice(0, 2), slice(2, 3))
    ]
    chunked, _ = _aggregate(mean(), *parts)
    assert_trees_all_close(chunked, whole)


@pytest.mark.parametrize("aggregator", [mean, sum])
def test_clients_not_kept_count_nothing_even_when_nan(aggregator):
    updates = UPDATES.copy()
    updates[1] = np.nan
    dropped, _ = _aggregate(aggregator(), _contributions(updates, keep=[True, False, True]))
    without, _ = _aggregate(aggregator(), _contributions(UPDATES[[0, 2]], WEIGHTS[[0, 2]]))
    assert_trees_all_close(dropped, without)
    assert np.all(np.isfinite(dropped["w"]))


def test_zero_weight_client_contributes_nothing_and_zero_total_is_zero_not_nan():
    value, _ = _aggregate(mean(), _contributions(weights=[0.0, 2.0, 0.0]))
    np.testing.assert_allclose(value["w"], [3.0, -1.0])
    value, _ = _aggregate(mean(), _contributions(weights=[0.0, 0.0, 0.0]))
    np.testing.assert_array_equal(value["w"], [0.0, 0.0])
    jitted = jax.jit(safe_divide)({"w": jnp.ones(3)}, jnp.float32(0.0))
    np.testing.assert_array_equal(jitted["w"], np.zeros(3))


def test_by_key_aggregates_each_part_with_its_own_aggregator():
    spec = {"a": SPEC, "b": SPEC}
    aggregator = by_key({"a": mean(), "b": sum()})
    contributions = _contributions()._replace(values={"a": {"w": UPDATES}, "b": {"w": 2 * UPDATES}})
    state = aggregator.init(spec)
    acc, rows = aggregator.accumulate(aggregator.start(state, spec, 3), state, contributions)
    value, _, _ = aggregator.finalize(acc, state, jax.random.PRNGKey(0))
    expected_mean, _ = _aggregate(mean(), _contributions())
    assert_trees_all_close(value["a"], expected_mean)
    np.testing.assert_allclose(value["b"]["w"], [9.0, 3.0])
    assert rows == {"a": (), "b": ()}
    with pytest.raises(TypeError, match="dict of Aggregators"):
        by_key({"a": "mean"})


def test_accumulate_under_jit_matches_eager():
    aggregator = mean()
    state = aggregator.init(SPEC)
    acc0 = aggregator.start(state, SPEC, 3)
    chunk = _contributions(keep=[True, True, False])
    eager, _ = aggregator.accumulate(acc0, state, chunk)
    jitted, _ = jax.jit(aggregator.accumulate)(acc0, state, chunk)
    assert_trees_all_close(jitted, eager)


def test_builders_reject_what_is_not_an_aggregator():
    import optax
    from engine_reference import wrap

    from fedjax_keras.algorithms import build_weighted_fed_avg
    from fedjax_keras.testing import toy_models

    with pytest.raises(TypeError, match="aggregation.Aggregator"):
        build_weighted_fed_avg(wrap(toy_models.mlp(seed=0)), optax.sgd(0.1), aggregator="median")
