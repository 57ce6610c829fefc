"""Tests for fedjax_keras/data/_synthetic.py."""

import importlib.util
import itertools
import pathlib

import numpy as np
import pytest

from fedjax_keras.data._synthetic import cifar_like, emnist_like, synthetic_leaf

_MAKE_WORKLOAD = pathlib.Path(__file__).resolve().parents[3] / "shared/bench/make_workload.py"

# Reduced client counts keep each case well under a second.
SMALL = {
    emnist_like: {"num_clients": 6},
    cifar_like: {"num_clients": 8, "per_client": 10},
    synthetic_leaf: {"num_clients": 12},
}


def _arrays(data):
    return data.examples["x"], data.examples["y"], np.asarray(data.client_offsets)


@pytest.mark.skipif(
    not _MAKE_WORKLOAD.exists(),
    reason=f"benchmark script {_MAKE_WORKLOAD} absent (CI without ../shared)",
)
@pytest.mark.parametrize(
    "generator, reference_name",
    [(emnist_like, "emnist_like"), (cifar_like, "cifar_like"), (synthetic_leaf, "synthetic_small")],
)
def test_bit_identical_to_make_workload(generator, reference_name):
    spec = importlib.util.spec_from_file_location("make_workload", _MAKE_WORKLOAD)
    make_workload = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_workload)
    expected = getattr(make_workload, reference_name)(**SMALL[generator])
    for got, want in zip(_arrays(generator(**SMALL[generator])), expected):
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "generator, x_shape",
    [(emnist_like, (28, 28, 1)), (cifar_like, (32, 32, 3)), (synthetic_leaf, (60,))],
)
def test_shapes_dtypes_and_offsets(generator, x_shape):
    data = generator(**SMALL[generator])
    x, y, offsets = _arrays(data)
    assert x.shape[1:] == x_shape and x.dtype == np.float32
    assert y.shape == (len(x),) and y.dtype == np.int32
    assert offsets[0] == 0 and offsets[-1] == len(x) and np.all(np.diff(offsets) > 0)
    assert data.num_clients == SMALL[generator]["num_clients"]
    if generator is not synthetic_leaf:
        assert x.min() >= 0.0 and x.max() <= 1.0


@pytest.mark.parametrize("generator", list(SMALL))
def test_seeded(generator):
    a = _arrays(generator(seed=3, **SMALL[generator]))
    b = _arrays(generator(seed=3, **SMALL[generator]))
    c = _arrays(generator(seed=4, **SMALL[generator]))
    for left, right in zip(a, b):
        np.testing.assert_array_equal(left, right)
    assert not np.array_equal(a[0][:10], c[0][:10])


def test_size_clipping_options():
    data = emnist_like(num_clients=30, size_median=50, size_sigma=2.0, min_size=10, max_size=80)
    sizes = np.diff(np.asarray(data.client_offsets))
    assert sizes.min() >= 10 and sizes.max() <= 80
    assert sizes.min() == 10 and sizes.max() == 80  # sigma=2 reaches both clips


def test_equal_sizes_with_zero_sigma():
    data = synthetic_leaf(num_clients=5, size_median=20.5, size_sigma=0.0)
    # Sizes are truncated, as in make_workload.py (exp(log(20)) is just below 20).
    np.testing.assert_array_equal(np.diff(np.asarray(data.client_offsets)), [20] * 5)


def _labels_per_client(data):
    _, y, offsets = _arrays(data)
    return np.mean([len(np.unique(y[a:b])) for a, b in itertools.pairwise(offsets)])


def test_label_concentration_controls_skew():
    skewed = cifar_like(num_clients=20, per_client=40, label_concentration=0.05)
    uniform = cifar_like(num_clients=20, per_client=40, label_concentration=100.0)
    assert _labels_per_client(skewed) < 3
    assert _labels_per_client(uniform) >= 9


def test_zero_noise_gives_class_prototypes():
    x, y, _ = _arrays(cifar_like(num_clients=3, per_client=20, noise=0.0))
    for label in np.unique(y):
        same = x[y == label]
        np.testing.assert_array_equal(same, np.broadcast_to(same[0], same.shape))


def test_synthetic_leaf_alpha_beta_change_data():
    iid_ish = _arrays(synthetic_leaf(alpha=0.0, beta=0.0, num_clients=4))
    hetero = _arrays(synthetic_leaf(alpha=1.0, beta=1.0, num_clients=4))
    assert not np.array_equal(iid_ish[0], hetero[0])


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: emnist_like(num_clients=0), "num_clients"),
        (lambda: emnist_like(num_clients=2, label_concentration=0.0), "label_concentration"),
        (lambda: emnist_like(num_clients=2, min_size=30, max_size=20), "min_size"),
        (lambda: cifar_like(num_clients=2, per_client=0), "per_client"),
        (lambda: synthetic_leaf(alpha=-1.0, num_clients=2), "alpha"),
    ],
)
def test_bad_arguments_name_the_argument(call, name):
    with pytest.raises(ValueError, match=name):
        call()
