"""clipped / zeroed: hand-computed norms and factors, dropped clients, composition."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from aggregator_helpers import contributions, run_round

import fedjax_keras  # noqa: F401
from fedjax_keras.aggregation import client_norms, clipped, mean, sum, zeroed

# Two leaves per client; norms over both together: 5, 0.5, 13 (hand-computed).
VALUES = {
    "a": np.array([[3.0], [0.3], [5.0]]),
    "b": np.array([[0.0, 4.0], [0.4, 0.0], [12.0, 0.0]]),
}


def test_client_norms_cover_all_leaves():
    np.testing.assert_allclose(client_norms(jax.tree.map(jnp.asarray, VALUES)), [5, 0.5, 13])


def test_clipped_sum_by_hand_and_metrics():
    value, _, metrics, _ = run_round(clipped(1.0, sum()), [contributions(VALUES)])
    # Client 0 scaled by 1/5, client 1 untouched, client 2 by 1/13.
    np.testing.assert_allclose(value["a"], [3 / 5 + 0.3 + 5 / 13], rtol=1e-6)
    np.testing.assert_allclose(value["b"], [0.4 + 12 / 13, 4 / 5], rtol=1e-6)
    assert float(metrics["clip/norm"]) == 1.0
    np.testing.assert_allclose(metrics["clip/clipped_fraction"], 2 / 3)


def test_no_clipped_contribution_exceeds_the_norm_even_for_a_huge_update():
    values = {"a": np.array([[3e8], [0.1], [-2.0]]), "b": np.array([[4e8, 0], [0, 0.2], [0, 1]])}
    for client in range(3):
        keep = np.arange(3) == client
        alone, *_ = run_round(clipped(0.7, sum()), [contributions(values, keep=keep)])
        norm = float(client_norms(jax.tree.map(lambda v: v[None], alone))[0])
        assert norm <= 0.7 * (1 + 1e-6)
    np.testing.assert_allclose(alone["b"], np.array([0, 1]) * 0.7 / np.sqrt(5), rtol=1e-6)


def test_zeroed_clients_still_count_in_the_mean():
    value, _, metrics, _ = run_round(
        zeroed(6.0, mean()), [contributions(VALUES, weights=[1.0, 2.0, 1.0])]
    )
    # Client 2 (norm 13) sends zeros but keeps its weight 1: denominator 4.
    np.testing.assert_allclose(value["a"], [(3.0 + 2 * 0.3) / 4], rtol=1e-6)
    np.testing.assert_allclose(value["b"], [(2 * 0.4) / 4, 4.0 / 4], rtol=1e-6)
    np.testing.assert_allclose(metrics["zeroing/zeroed_fraction"], 1 / 3)


@pytest.mark.parametrize("wrapper", [clipped, zeroed])
def test_dropped_nan_clients_change_nothing(wrapper):
    values = {k: v.copy() for k, v in VALUES.items()}
    values["a"][1] = np.nan
    dropped, _, metrics, _ = run_round(
        wrapper(6.0, mean()), [contributions(values, keep=[True, False, True])]
    )
    without, *_ = run_round(
        wrapper(6.0, mean()), [contributions({k: v[[0, 2]] for k, v in VALUES.items()})]
    )
    jax.tree.map(np.testing.assert_allclose, dropped, without)
    name = "clip/clipped_fraction" if wrapper is clipped else "zeroing/zeroed_fraction"
    np.testing.assert_allclose(metrics[name], 1 / 2)


def test_wrappers_compose_chunk_by_chunk():
    aggregator = zeroed(10.0, clipped(1.0, mean()))
    whole, _, metrics, _ = run_round(aggregator, [contributions(VALUES)])
    parts = [
        contributions({k: v[:2] for k, v in VALUES.items()}),
        contributions({k: v[2:] for k, v in VALUES.items()}),
    ]
    chunked, *_ = run_round(aggregator, parts)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), whole, chunked)
    # Client 2 zeroed (13 > 10) but counted; client 0 clipped to norm 1.
    np.testing.assert_allclose(whole["a"], [(3 / 5 + 0.3) / 3], rtol=1e-6)
    assert set(metrics) == {
        "clip/norm",
        "clip/clipped_fraction",
        "zeroing/norm",
        "zeroing/zeroed_fraction",
    }
    # Clipped after zeroing: the zeroed client's zeros are not clipped.
    np.testing.assert_allclose(metrics["clip/clipped_fraction"], 1 / 3)


@pytest.mark.parametrize("norm", [0, -1.0, float("inf"), "one", None, True])
def test_bad_norms_raise(norm):
    with pytest.raises(ValueError, match="norm must be a positive finite number"):
        clipped(norm, mean())


def test_inner_must_be_an_aggregator():
    with pytest.raises(TypeError, match="inner must be a fedjax_keras.aggregation.Aggregator"):
        clipped(1.0, "mean")
