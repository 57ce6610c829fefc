"""Running sums over clients: weighted sums, non-finite clients dropped, zero weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fedjax_keras  # noqa: F401
from fedjax_keras.aggregation import ClientOutput, accumulate, init_accumulator, weighted_mean
from fedjax_keras.testing import assert_trees_all_close


def _merge(a, b):
    return jax.tree.map(jnp.add, a, b)


def _outputs(update, weight, loss_sum=None, extras=None, summed=None):
    """A chunk of ClientOutputs with leaves [clients, ...]."""
    update = np.asarray(update, np.float32)
    n = len(update)
    weight = np.asarray(weight, np.float32)
    return ClientOutput(
        update={"w": update},
        weight=weight,
        weighted_extras={"bn": np.arange(n, dtype=np.float32)[:, None] * np.float32([1, 2])}
        if extras is None
        else extras,
        summed_extras={"c": np.ones((n, 2), np.float32)} if summed is None else summed,
        metrics={"count": np.ones((n,), np.float32), "int_total": np.full((n,), 2, np.int32)},
        loss_sum=np.ones((n,), np.float32)
        if loss_sum is None
        else np.asarray(loss_sum, np.float32),
        num_examples=weight.astype(np.int32),
        client_state=(),
    )


def _one(outputs):
    return jax.tree.map(lambda a: a[0], outputs)


def _run(outputs, valid=None):
    n = len(outputs.weight)
    acc = init_accumulator(_one(outputs))
    valid = np.ones(n, bool) if valid is None else np.asarray(valid)
    return accumulate(acc, outputs, valid, _merge)


UPDATES = [[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]]
WEIGHTS = [1.0, 2.0, 5.0]


def test_weighted_sums_by_hand():
    acc, kept = _run(_outputs(UPDATES, WEIGHTS))
    np.testing.assert_array_equal(kept, [True, True, True])
    np.testing.assert_allclose(acc.update_sum["w"], [1 + 6 + 2.5, 2 - 2 + 2.5])
    assert float(acc.weight_sum) == 8.0
    # weighted_extras rows are [i, 2i]: sum of w_i * i = 0 + 2 + 10.
    np.testing.assert_allclose(acc.weighted_extras_sum["bn"], [12.0, 24.0])
    np.testing.assert_allclose(acc.summed_extras_sum["c"], [3.0, 3.0])
    assert float(acc.metrics["count"]) == 3.0 and int(acc.metrics["int_total"]) == 6
    assert float(acc.loss_sum) == 3.0
    assert int(acc.num_examples) == 8
    assert (int(acc.num_clients), int(acc.num_dropped)) == (3, 0)
    np.testing.assert_allclose(
        weighted_mean(acc.update_sum, acc.weight_sum)["w"], [9.5 / 8, 2.5 / 8]
    )


def test_chunk_by_chunk_equals_all_at_once():
    outputs = _outputs(UPDATES, WEIGHTS)
    whole, _ = _run(outputs)
    acc = init_accumulator(_one(outputs))
    for part in (slice(0, 2), slice(2, 3)):
        chunk = jax.tree.map(lambda a, part=part: a[part], outputs)
        acc, _ = accumulate(acc, chunk, np.ones(len(chunk.weight), bool), _merge)
    assert_trees_all_close(acc, whole)


@pytest.mark.parametrize("where", ["update", "loss_sum", "summed_extras", "weighted_extras", "inf"])
def test_non_finite_client_is_dropped(where):
    updates = [list(u) for u in UPDATES]
    loss = [1.0, 1.0, 1.0]
    extras = summed = None
    if where == "update":
        updates[1][0] = np.nan
    elif where == "inf":
        updates[1][1] = -np.inf
    elif where == "loss_sum":
        loss[1] = np.nan
    elif where == "summed_extras":
        summed = {"c": np.array([[1, 1], [np.nan, 1], [1, 1]], np.float32)}
    else:
        extras = {"bn": np.array([[0, 0], [1, np.nan], [2, 4]], np.float32)}
    acc, kept = _run(_outputs(updates, WEIGHTS, loss, extras, summed))
    without, _ = _run(_outputs(UPDATES, WEIGHTS), valid=[True, False, True])
    np.testing.assert_array_equal(kept, [True, False, True])
    assert int(acc.num_dropped) == 1 and int(acc.num_clients) == 2
    assert_trees_all_close(acc._replace(num_dropped=without.num_dropped), without)
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(acc))


def test_padding_clients_are_ignored_and_not_counted_as_dropped():
    updates = [UPDATES[0], [np.nan, np.nan], UPDATES[2]]
    acc, kept = _run(_outputs(updates, WEIGHTS), valid=[True, False, True])
    np.testing.assert_array_equal(kept, [True, False, True])
    assert int(acc.num_dropped) == 0 and int(acc.num_clients) == 2
    np.testing.assert_allclose(acc.update_sum["w"], [1 + 2.5, 2 + 2.5])
    assert float(acc.weight_sum) == 6.0


def test_zero_weight_client_contributes_nothing():
    acc, kept = _run(_outputs(UPDATES, [0.0, 2.0, 0.0]))
    assert bool(np.all(kept))
    np.testing.assert_allclose(acc.update_sum["w"], [6.0, -2.0])
    np.testing.assert_allclose(weighted_mean(acc.update_sum, acc.weight_sum)["w"], [3.0, -1.0])


def test_weighted_mean_of_zero_weight_is_zero_not_nan():
    acc, _ = _run(_outputs(UPDATES, [0.0, 0.0, 0.0]))
    mean = weighted_mean(acc.update_sum, acc.weight_sum)
    np.testing.assert_array_equal(mean["w"], [0.0, 0.0])
    mean = jax.jit(weighted_mean)({"w": jnp.ones(3)}, jnp.float32(0.0))
    np.testing.assert_array_equal(mean["w"], np.zeros(3))


def test_all_dropped_chunk_leaves_sums_at_zero():
    acc, kept = _run(_outputs([[np.nan, 1.0]] * 3, WEIGHTS))
    assert not np.any(kept)
    assert int(acc.num_dropped) == 3 and float(acc.weight_sum) == 0.0
    np.testing.assert_array_equal(acc.update_sum["w"], [0.0, 0.0])
    np.testing.assert_array_equal(weighted_mean(acc.update_sum, acc.weight_sum)["w"], [0.0, 0.0])


def test_accumulate_under_jit_matches_eager():
    outputs = _outputs(UPDATES, WEIGHTS)
    acc0 = init_accumulator(_one(outputs))
    valid = np.array([True, True, False])
    eager = accumulate(acc0, outputs, valid, _merge)
    jitted = jax.jit(lambda a, o, v: accumulate(a, o, v, _merge))(acc0, outputs, valid)
    assert_trees_all_close(jitted, eager)
