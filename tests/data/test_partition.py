"""Tests for fedjax_keras/data/_partition.py."""

import functools
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedjax_keras.data._partition import (
    partition_dirichlet,
    partition_iid,
    partition_quantity_skew,
    partition_shards,
)

NUM_CLASSES = 10


def _dataset(n=2000, seed=0):
    """x [n, 3]: column 0 is the row id, so rows can be traced; y [n] labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
    x = np.stack([np.arange(n), y * 10, rng.integers(0, 100, n)], axis=1).astype(np.int64)
    return x, y


def _clients(data):
    x, y = data.examples["x"], data.examples["y"]
    offsets = np.asarray(data.client_offsets)
    return [(x[a:b], y[a:b]) for a, b in itertools.pairwise(offsets)]


def _histograms(data):
    return np.array([np.bincount(y, minlength=NUM_CLASSES) for _, y in _clients(data)])


def _mean_label_entropy(data):
    h = _histograms(data).astype(float)
    p = h / h.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.mean(-np.nansum(p * np.log(p), axis=1)))


PARTITIONERS = {
    "iid": functools.partial(partition_iid, num_clients=20, seed=0),
    "dirichlet": functools.partial(partition_dirichlet, num_clients=20, alpha=0.3, seed=0),
    "shards": functools.partial(partition_shards, num_clients=20, shards_per_client=2, seed=0),
    "quantity": functools.partial(partition_quantity_skew, num_clients=20, seed=0, sigma=1.0),
}


def _assert_exact_cover(data, x, y):
    """Every input row lands in exactly one client, with its own label."""
    got_x, got_y = data.examples["x"], data.examples["y"]
    assert data.num_examples == len(x) == len(got_x)
    np.testing.assert_array_equal(np.sort(got_x[:, 0]), np.arange(len(x)))
    np.testing.assert_array_equal(got_x, x[got_x[:, 0]])
    np.testing.assert_array_equal(got_y, y[got_x[:, 0]])
    assert np.asarray(data.client_sizes).sum() == len(x)


@pytest.mark.parametrize("name", list(PARTITIONERS))
def test_every_example_in_exactly_one_client(name):
    x, y = _dataset()
    data = PARTITIONERS[name](x, y)
    assert data.num_clients == 20
    _assert_exact_cover(data, x, y)


@pytest.mark.parametrize("name", list(PARTITIONERS))
def test_deterministic_by_seed(name):
    x, y = _dataset()
    a, b = PARTITIONERS[name](x, y), PARTITIONERS[name](x, y)
    c = PARTITIONERS[name].func(x, y, **{**PARTITIONERS[name].keywords, "seed": 1})
    np.testing.assert_array_equal(a.examples["x"], b.examples["x"])
    np.testing.assert_array_equal(a.client_offsets, b.client_offsets)
    assert not np.array_equal(a.examples["x"], c.examples["x"])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 120),
    num_clients=st.integers(1, 12),
    alpha=st.floats(0.05, 50.0),
    sigma=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**31),
)
def test_exact_cover_property(n, num_clients, alpha, sigma, seed):
    x, y = _dataset(n, seed % 1000)
    num_clients = min(num_clients, n)
    _assert_exact_cover(partition_iid(x, y, num_clients, seed), x, y)
    _assert_exact_cover(partition_dirichlet(x, y, num_clients, alpha, seed, min_size=0), x, y)
    _assert_exact_cover(partition_quantity_skew(x, y, num_clients, seed, sigma=sigma), x, y)
    for shards_per_client in (1, 2, 3):
        if n % (num_clients * shards_per_client) == 0:
            data = partition_shards(x, y, num_clients, shards_per_client, seed)
            _assert_exact_cover(data, x, y)


def test_pytree_inputs():
    x, y = _dataset(100)
    tree = {"ids": x[:, 0], "pair": (x[:, 1], x[:, 2])}
    data = partition_iid(tree, y, num_clients=7, seed=0)
    got = data.examples["x"]
    rows = got["ids"]
    np.testing.assert_array_equal(np.sort(rows), np.arange(100))
    np.testing.assert_array_equal(got["pair"][0], x[rows, 1])
    np.testing.assert_array_equal(got["pair"][1], x[rows, 2])
    np.testing.assert_array_equal(data.examples["y"], y[rows])


def test_iid_sizes_and_histograms_close_to_global():
    x, y = _dataset(20000)
    data = partition_iid(x, y, num_clients=10, seed=0)
    sizes = np.asarray(data.client_sizes)
    assert sizes.max() - sizes.min() <= 1
    global_p = np.bincount(y, minlength=NUM_CLASSES) / len(y)
    client_p = _histograms(data) / sizes[:, None]
    # About 200 examples per class and client: binomial std of p is about 0.007.
    assert np.abs(client_p - global_p).max() < 0.04


def test_dirichlet_skew_is_monotone_in_alpha():
    x, y = _dataset(4000)
    entropies = [
        _mean_label_entropy(partition_dirichlet(x, y, 20, alpha, seed=0))
        for alpha in (0.05, 0.3, 1.0, 10.0, 1000.0)
    ]
    assert entropies == sorted(entropies)
    assert entropies[-1] > 0.97 * np.log(NUM_CLASSES)  # near IID


def test_dirichlet_small_alpha_has_few_dominant_labels():
    x, y = _dataset(4000)
    hist = _histograms(partition_dirichlet(x, y, 20, alpha=0.05, seed=0))
    top2_share = np.sort(hist, axis=1)[:, -2:].sum(1) / hist.sum(1)
    assert np.median(top2_share) > 0.8


def test_dirichlet_min_size_is_honoured():
    x, y = _dataset(1000)
    data = partition_dirichlet(x, y, 20, alpha=0.1, seed=0, min_size=10)
    assert np.asarray(data.client_sizes).min() >= 10


def test_dirichlet_impossible_min_size_says_what_to_change():
    x, y = _dataset(200)
    with pytest.raises(ValueError, match="lower min_size, raise alpha"):
        partition_dirichlet(x, y, 20, alpha=0.001, seed=0, min_size=10)


def test_shards_give_at_most_shards_per_client_labels():
    # 10 classes x 60 examples, shards of 30: each shard holds one label.
    y = np.repeat(np.arange(NUM_CLASSES), 60).astype(np.int32)
    x = np.stack([np.arange(len(y)), y], axis=1)
    data = partition_shards(x, y, num_clients=10, shards_per_client=2, seed=0)
    _assert_exact_cover(data, x, y)
    labels_per_client = [len(np.unique(cy)) for _, cy in _clients(data)]
    assert max(labels_per_client) <= 2
    assert np.asarray(data.client_sizes).tolist() == [60] * 10


def test_quantity_skew_spread_grows_with_sigma():
    x, y = _dataset(5000)

    def spread(sigma):
        sizes = np.asarray(partition_quantity_skew(x, y, 50, seed=0, sigma=sigma).client_sizes)
        return sizes.std() / sizes.mean()

    spreads = [spread(s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert spreads[0] < 0.01  # equal sizes
    assert spreads == sorted(spreads)


def test_quantity_skew_min_size():
    x, y = _dataset(500)
    data = partition_quantity_skew(x, y, 50, seed=0, sigma=3.0, min_size=5)
    assert np.asarray(data.client_sizes).min() >= 5


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x, y: partition_iid(x, y, 0, seed=0), "num_clients"),
        (lambda x, y: partition_iid(x, y, 101, seed=0), r"num_clients .*\[1, 100\]"),
        (lambda x, y: partition_iid(x, y[:50], 5, seed=0), "leading dimension"),
        (lambda x, y: partition_dirichlet(x, y, 5, alpha=0.0, seed=0), "alpha must be > 0"),
        (lambda x, y: partition_dirichlet(x, y, 5, alpha=1.0, seed=0, min_size=30), "min_size"),
        (lambda x, y: partition_dirichlet(x, y * 0.5, 5, 1.0, seed=0), "integer class labels"),
        (lambda x, y: partition_shards(x, y, 3, shards_per_client=2, seed=0), "must divide"),
        (lambda x, y: partition_shards(x, y, 5, shards_per_client=0, seed=0), "shards_per_client"),
        (lambda x, y: partition_quantity_skew(x, y, 5, seed=0, sigma=-1.0), "sigma"),
        (lambda x, y: partition_quantity_skew(x, y, 5, seed=0, min_size=21), "min_size"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, message):
    x, y = _dataset(100)
    with pytest.raises(ValueError, match=message):
        call(x, y)
