"""quantized and top_k: unbiasedness, grids, exact k, error feedback by hand over two rounds;
upload_size: the inner aggregate unchanged, the bits counted by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg
from aggregator_helpers import contributions, run_round
from engine_reference import SGD, delta, local_train, make_clients, sliced_batches, wrap

import fedjax_keras
from fedjax_keras.aggregation import Aggregator, hadamard, mean, quantized, top_k, upload_size
from fedjax_keras.models import ModelWeights
from fedjax_keras.testing import toy_models

RNG = np.random.default_rng(0)
X = {"a": RNG.normal(size=3), "b": RNG.normal(size=(2, 5)) * 3}


def _recorder():
    """A stacked inner aggregator whose aggregate is every client's values, by slot."""

    def start(state, spec, capacity):
        return jax.tree.map(lambda s: jnp.zeros((capacity,) + s.shape, s.dtype), spec)

    def accumulate(acc, state, c):
        rows = jax.tree.map(lambda r, v: r.at[c.slots].set(v, mode="drop"), acc, c.values)
        return rows, c.client_states

    return Aggregator(
        lambda spec: (), start, accumulate, lambda acc, s, k: (acc, s, {}), stacked=True
    )


def _repeat(tree, clients):
    return {k: np.broadcast_to(v, (clients,) + v.shape) for k, v in tree.items()}


@pytest.mark.parametrize("rotation", [False, True])
def test_quantization_is_unbiased(rotation):
    clients = 4000
    value, _, metrics, _ = run_round(
        quantized(2, mean(), rotation=rotation), [contributions(_repeat(X, clients))]
    )
    for k in X:
        # The rounding stddev of a coordinate is at most (span / 3 levels) / 2, where a
        # rotated leaf's span is at most 2 ||x||; of the mean over clients, / sqrt(clients).
        span = 2 * np.linalg.norm(X[k]) if rotation else X[k].max() - X[k].min()
        bound = span / 6 / np.sqrt(clients)
        np.testing.assert_allclose(value[k], X[k], atol=5 * bound)
    assert not rotation or metrics["quantized/bits_per_client"] == 2 * (4 + 16) + 2 * 64


def test_quantized_values_lie_on_the_grid_and_vary_between_clients():
    received, _, metrics, _ = run_round(quantized(3, _recorder()), [contributions(_repeat(X, 50))])
    for k in X:
        low, high = X[k].min(), X[k].max()
        levels = (np.asarray(received[k]) - low) / (high - low) * 7
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
        # Each coordinate rounds to one of its two neighbouring levels.
        target = (X[k] - low) / (high - low) * 7
        assert np.all(np.abs(levels - target) < 1 + 1e-4)
        assert len({tuple(np.ravel(r)) for r in np.asarray(received[k])}) > 1
    assert metrics["quantized/bits_per_client"] == 3 * 13 + 2 * 64
    np.testing.assert_allclose(metrics["quantized/ratio_to_float32"], (3 * 13 + 128) / (32 * 13))


def test_sixteen_bits_are_nearly_exact_and_constant_leaves_are_kept():
    values = _repeat({"a": X["a"], "c": np.full(4, 0.7)}, 3)
    received, *_ = run_round(quantized(16, _recorder()), [contributions(values)])
    np.testing.assert_allclose(received["a"], values["a"], atol=1e-4)
    np.testing.assert_array_equal(received["c"], np.full((3, 4), 0.7, np.float32))


def test_hadamard_is_the_normalised_walsh_hadamard_matrix():
    x = RNG.normal(size=(3, 16)).astype(np.float32)
    want = x @ scipy.linalg.hadamard(16).T / 4.0
    np.testing.assert_allclose(hadamard(jnp.asarray(x)), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hadamard(hadamard(jnp.asarray(x))), x, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="power-of-two"):
        hadamard(jnp.ones(6))


def test_top_k_keeps_exactly_the_k_largest_over_all_leaves():
    values = {"a": RNG.normal(size=(6, 3)), "b": RNG.normal(size=(6, 2, 5))}
    received, _, metrics, _ = run_round(
        top_k(4, _recorder(), error_feedback=False), [contributions(values)]
    )
    flat = np.concatenate([values["a"], values["b"].reshape(6, -1)], axis=1)
    got = np.concatenate([received["a"], np.asarray(received["b"]).reshape(6, -1)], axis=1)
    assert np.all(np.count_nonzero(got, axis=1) == 4)
    for client in range(6):
        largest = np.argsort(-np.abs(flat[client]))[:4]
        want = np.zeros(13)
        want[largest] = flat[client, largest]
        np.testing.assert_allclose(got[client], want, rtol=1e-6)
    # 4 floats and 4 indices of ceil(log2 13) = 4 bits.
    assert metrics["top_k/bits_per_client"] == 4 * (32 + 4)
    np.testing.assert_allclose(metrics["top_k/ratio_to_float32"], 4 * 36 / (32 * 13))


def _top_k_by_hand(vector, k):
    sent = np.zeros_like(vector)
    largest = np.argsort(-np.abs(vector))[:k]
    sent[largest] = vector[largest]
    return sent


def test_error_feedback_residual_is_carried_in_the_client_table_over_two_rounds():
    """FedAvg with top_k(10) over the same 3 clients twice, against numpy by hand."""
    model = wrap(toy_models.mlp(seed=5))
    data = make_clients([4, 3, 5], seed=6)
    process = fedjax_keras.algorithms.build_weighted_fed_avg(
        model, optax.sgd(0.1), aggregator=top_k(10, mean()), batch_size=2, shuffle=False
    )
    state = process.initialize(0)
    names = sorted(model.initial_weights.trainable)
    flatten = lambda tree: np.concatenate([np.ravel(tree[n]) for n in names])

    server = model.initial_weights
    residuals = [0.0] * 3
    for _ in range(2):
        state = process.next(state, data).state
        sent, weights = [], []
        for i, (_, c) in enumerate(data):
            d = delta(local_train(model, server, sliced_batches(c["x"], c["y"], 2), SGD), server)
            u = flatten(d) + residuals[i]
            sent.append(_top_k_by_hand(u, 10))
            residuals[i] = u - sent[-1]
            weights.append(len(c["y"]))
        step = np.average(sent, axis=0, weights=weights)
        flat_server = flatten(server.trainable) + step
        trainable, offset = {}, 0
        for n in names:
            size = np.size(server.trainable[n])
            shape = np.shape(server.trainable[n])
            trainable[n] = jnp.asarray(flat_server[offset : offset + size].reshape(shape))
            offset += size
        server = ModelWeights(trainable, server.non_trainable)
        stored = state.client_states.rows["aggregator"]["residual"]
        for i in range(3):
            np.testing.assert_allclose(
                flatten({n: np.asarray(stored[n][i]) for n in names}), residuals[i], atol=2e-6
            )
        np.testing.assert_allclose(flatten(state.model.trainable), flat_server, atol=2e-6)
    # What was sent is not kept: at least the 10 sent coordinates are zero in each residual.
    assert all(np.count_nonzero(r) <= r.size - 10 for r in residuals)
    assert np.asarray(state.client_states.seen).all()


def test_upload_size_leaves_the_mean_unchanged_and_counts_32_bits_a_float():
    values = _repeat(X, 4)
    values = {k: v * np.arange(1, 5).reshape((4,) + (1,) * (v.ndim - 1)) for k, v in values.items()}
    chunks = [contributions(values, weights=[1.0, 2.0, 3.0, 4.0])]
    plain, _, _, _ = run_round(mean(), chunks)
    counted, _, metrics, _ = run_round(upload_size(mean()), chunks)
    for name in X:
        np.testing.assert_array_equal(np.asarray(counted[name]), np.asarray(plain[name]))
    assert float(metrics["upload/bits_per_client"]) == 32 * (3 + 2 * 5)
    assert float(metrics["upload/ratio_to_float32"]) == 1.0


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: quantized(0, mean()), "bits must be an int from 1 to 16"),
        (lambda: quantized(8.0, mean()), "bits must be an int from 1 to 16"),
        (lambda: top_k(0, mean()), "k must be a positive int"),
    ],
)
def test_bad_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        build()
