"""Tests for fedjax_keras.data.FederatedData: construction, access, sampling, splits, errors."""

import numpy as np
import pytest

from fedjax_keras.data import FederatedData

SIZES = [3, 0, 5, 1, 4]


def make_data(sizes=SIZES, ids=None, seed=0):
    """Multi-input x (dict with a nested tuple), y = row number, so rows are traceable."""
    n = int(np.sum(sizes))
    rng = np.random.default_rng(seed)
    x = {
        "image": rng.normal(size=(n, 2, 3)).astype(np.float32),
        "aux": (np.arange(n, dtype=np.float64), rng.integers(0, 9, size=(n, 4))),
    }
    y = np.arange(n, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return FederatedData.from_arrays(x, y, offsets, ids), x, y, offsets


def rows_of(example_tree):
    """The y leaf (row numbers) of a client's {'x', 'y'}."""
    return np.asarray(example_tree["y"])


def assert_trees_equal(a, b):
    import jax

    la, ta = jax.tree_util.tree_flatten(a)
    lb, tb = jax.tree_util.tree_flatten(b)
    assert ta == tb
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(u, v)


# -- construction ---------------------------------------------------------------------------


def test_from_arrays_properties():
    data, x, y, offsets = make_data()
    assert data.num_clients == len(data) == 5
    assert data.num_examples == 13
    assert data.client_ids == (0, 1, 2, 3, 4)
    np.testing.assert_array_equal(data.client_sizes, SIZES)
    assert data.client_sizes.dtype == np.int64
    assert data.client_offsets.dtype == np.int64
    np.testing.assert_array_equal(data.client_offsets, offsets)
    assert_trees_equal(data.examples, {"x": x, "y": y})


def test_client_access_returns_the_clients_rows():
    data, x, _, offsets = make_data(ids=list("abcde"))
    for position, client_id in enumerate("abcde"):
        lo, hi = offsets[position], offsets[position + 1]
        want = {
            "x": {"image": x["image"][lo:hi], "aux": (x["aux"][0][lo:hi], x["aux"][1][lo:hi])},
            "y": np.arange(lo, hi),
        }
        assert_trees_equal(data.client(position), want)
        assert_trees_equal(data.client_by_id(client_id), want)
    assert_trees_equal(data.client(-1), data.client(4))
    got = [(i, rows_of(c).tolist()) for i, c in data]
    assert got == [
        ("a", [0, 1, 2]),
        ("b", []),
        ("c", [3, 4, 5, 6, 7]),
        ("d", [8]),
        ("e", [9, 10, 11, 12]),
    ]


def test_client_returns_views_and_arrays_are_read_only():
    data, *_ = make_data()
    image = data.client(2)["x"]["image"]
    assert np.shares_memory(image, data.examples["x"]["image"])
    with pytest.raises(ValueError):
        image[0] = 1.0
    with pytest.raises(ValueError):
        data.examples["y"][0] = 7
    with pytest.raises(AttributeError):
        data.client_ids = (9,)


def test_from_client_dict_preserves_order_and_accepts_tuples():
    a = {"x": np.ones((2, 3)), "y": np.array([1, 2])}
    b = (np.zeros((0, 3)), np.zeros(0, np.int64))
    c = (np.full((1, 3), 5.0), np.array([9]))
    data = FederatedData.from_client_dict({"zed": a, "amy": b, 7: c})
    assert data.client_ids == ("zed", "amy", 7)
    np.testing.assert_array_equal(data.client_sizes, [2, 0, 1])
    np.testing.assert_array_equal(data.examples["y"], [1, 2, 9])
    np.testing.assert_array_equal(data.client_by_id(7)["x"], [[5.0, 5.0, 5.0]])


def test_from_client_list_nested_inputs():
    clients = [
        {"x": {"a": np.arange(4.0).reshape(2, 2), "b": [np.arange(2)]}, "y": np.array([0, 1])},
        {"x": {"a": np.full((3, 2), 7.0), "b": [np.arange(3) + 10]}, "y": np.array([2, 3, 4])},
    ]
    data = FederatedData.from_client_list(clients)
    assert data.client_ids == (0, 1)
    np.testing.assert_array_equal(data.examples["x"]["b"][0], [0, 1, 10, 11, 12])
    assert_trees_equal(data.client(1), clients[1])


def test_repr_is_short():
    data, *_ = make_data()
    text = repr(data)
    assert "num_clients=5" in text and "num_examples=13" in text and "float32[2, 3]" in text


# -- subset and sampling --------------------------------------------------------------------


def test_subset_gathers_clients_in_order():
    data, *_ = make_data(ids=list("abcde"))
    sub = data.subset([4, 0, 2])
    assert sub.client_ids == ("e", "a", "c")
    np.testing.assert_array_equal(sub.client_sizes, [4, 3, 5])
    np.testing.assert_array_equal(sub.examples["y"], [9, 10, 11, 12, 0, 1, 2, 3, 4, 5, 6, 7])
    np.testing.assert_array_equal(
        sub.examples["x"]["image"], data.examples["x"]["image"][sub.examples["y"]]
    )
    assert not np.shares_memory(sub.examples["y"], data.examples["y"])


def test_subset_with_repeats_names_copies():
    data, *_ = make_data(ids=list("abcde"))
    sub = data.subset([2, 0, 2, 2, 1])
    assert sub.client_ids == ("c", "a", ("c", 1), ("c", 2), "b")
    for position, source in enumerate([2, 0, 2, 2, 1]):
        assert_trees_equal(sub.client(position), data.client(source))
    empty = data.subset([])
    assert empty.num_clients == 0 and empty.num_examples == 0
    assert empty.examples["x"]["image"].shape == (0, 2, 3)


@pytest.mark.parametrize("seed", [0, 1, 17])
def test_sample_clients_is_exactly_default_rng_choice(seed):
    data, *_ = make_data(sizes=list(range(1, 21)))
    want = np.random.default_rng(seed).choice(20, 6, replace=False)
    np.testing.assert_array_equal(data.sample_client_positions(6, seed), want)
    cohort = data.sample_clients(6, seed)
    assert cohort.client_ids == tuple(want.tolist())
    for position, source in enumerate(want):
        assert_trees_equal(cohort.client(position), data.client(source))


def test_sample_clients_with_replacement_when_cohort_exceeds_population():
    data, *_ = make_data()
    want = np.random.default_rng(3).choice(5, 12, replace=True)
    np.testing.assert_array_equal(data.sample_client_positions(12, seed=3), want)
    cohort = data.sample_clients(12, seed=3)
    assert cohort.num_clients == 12
    np.testing.assert_array_equal(cohort.client_sizes, np.asarray(SIZES)[want])
    assert len(set(cohort.client_ids)) == 12
    # replace=True is honoured even when the cohort fits in the population.
    np.testing.assert_array_equal(
        data.sample_client_positions(4, seed=5, replace=True),
        np.random.default_rng(5).choice(5, 4, replace=True),
    )


def test_poisson_sampling_is_seeded_bernoulli_per_client():
    data, *_ = make_data(sizes=[1] * 2000)
    draws = np.random.default_rng(4).random(2000)
    want = np.flatnonzero(draws < 0.1)
    np.testing.assert_array_equal(data.sample_client_positions_poisson(0.1, seed=4), want)
    cohort = data.sample_clients_poisson(0.1, seed=4)
    assert cohort.client_ids == tuple(want.tolist())
    np.testing.assert_array_equal(cohort.population_positions, want)
    # Sizes vary around q * C (binomial: mean 200, stddev 13.4).
    sizes = [len(data.sample_client_positions_poisson(0.1, seed=s)) for s in range(200)]
    assert abs(np.mean(sizes) - 200) < 3 and 10 < np.std(sizes) < 17
    assert len(set(sizes)) > 20
    assert data.sample_clients_poisson(0.0, seed=0).num_clients == 0
    assert data.sample_clients_poisson(1.0, seed=0).num_clients == 2000
    for bad in (-0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="probability must be a number in"):
            data.sample_client_positions_poisson(bad, seed=0)


# -- train/test split -----------------------------------------------------------------------


def test_train_test_split_per_client_counts_and_content():
    sizes = [10, 1, 0, 7, 3]
    data, *_ = make_data(sizes=sizes)
    train, test = data.train_test_split(0.3, seed=0)
    np.testing.assert_array_equal(test.client_sizes, [3, 0, 0, 2, 0])  # floor(0.3 * n)
    np.testing.assert_array_equal(train.client_sizes, [7, 1, 0, 5, 3])
    assert train.client_ids == test.client_ids == data.client_ids
    for c in range(len(sizes)):
        tr, te = rows_of(train.client(c)), rows_of(test.client(c))
        assert np.all(np.diff(tr) > 0) and np.all(np.diff(te) > 0)  # original order kept
        np.testing.assert_array_equal(np.sort(np.concatenate([tr, te])), rows_of(data.client(c)))
    rows = train.examples["y"]
    np.testing.assert_array_equal(train.examples["x"]["image"], data.examples["x"]["image"][rows])


def test_train_test_split_is_seeded_and_floors_exact_products():
    data, *_ = make_data(sizes=[100, 40])
    a_train, a_test = data.train_test_split(0.29, seed=1)
    b_train, b_test = data.train_test_split(0.29, seed=1)
    _, c_test = data.train_test_split(0.29, seed=2)
    np.testing.assert_array_equal(a_test.client_sizes, [29, 11])  # 0.29 * 100 is 28.999...
    np.testing.assert_array_equal(a_test.examples["y"], b_test.examples["y"])
    np.testing.assert_array_equal(a_train.examples["y"], b_train.examples["y"])
    assert not np.array_equal(a_test.examples["y"], c_test.examples["y"])


# -- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "offsets, match",
    [
        ([1, 3, 13], "client_offsets"),  # does not start at 0
        ([0, 5, 3, 13], "client_offsets.*decreases"),
        ([0, 3, 12], "client_offsets.*N=13"),  # would drop an example
        ([[0, 13]], "client_offsets"),
    ],
)
def test_bad_offsets_raise(offsets, match):
    _, x, y, _ = make_data()
    with pytest.raises(ValueError, match=match):
        FederatedData.from_arrays(x, y, offsets)


def test_float_offsets_raise_type_error():
    with pytest.raises(TypeError, match="client_offsets"):
        FederatedData.from_arrays(np.zeros((2, 1)), np.zeros(2), [0.0, 2.0])


def test_leading_dimension_mismatch_names_the_leaves():
    with pytest.raises(ValueError, match=r"leading.*x\['a'\].*: 4.*y.*: 3"):
        FederatedData.from_arrays({"a": np.zeros((4, 2))}, np.zeros(3), [0, 3])


def test_missing_or_extra_keys_raise():
    with pytest.raises(ValueError, match=r"examples.*missing \['y'\]"):
        FederatedData({"x": np.zeros(2)}, [0, 2])
    with pytest.raises(ValueError, match=r"clients\['a'\].*'y'"):
        FederatedData.from_client_dict({"a": {"x": np.zeros(2)}})
    with pytest.raises(ValueError, match=r"unexpected \['w'\]"):
        FederatedData.from_client_list([{"x": np.zeros(2), "y": np.zeros(2), "w": np.ones(2)}])
    with pytest.raises(TypeError, match=r"clients\[0\].*tuple \(x, y\)"):
        FederatedData.from_client_list([(np.zeros(2),)])


def test_non_array_data_raises():
    with pytest.raises(TypeError, match=r"x\['a'\].*dtype=object"):
        FederatedData.from_arrays({"a": object()}, np.zeros(1), [0, 1])
    with pytest.raises(ValueError, match="y.*scalar"):
        FederatedData.from_arrays(np.zeros((1, 2)), 3, [0, 1])
    with pytest.raises(ValueError, match="x holds no array"):
        FederatedData.from_arrays({}, np.zeros(1), [0, 1])


def test_client_structure_mismatch_names_the_client():
    with pytest.raises(ValueError, match=r"clients\[1\].*same structure"):
        FederatedData.from_client_list(
            [(np.zeros((2, 3)), np.zeros(2)), (np.zeros((2, 4)), np.zeros(2))]
        )
    with pytest.raises(ValueError, match="at least one client"):
        FederatedData.from_client_dict({})


def test_client_ids_errors():
    _, x, y, offsets = make_data()
    with pytest.raises(ValueError, match=r"client_ids must be distinct.*'a'"):
        FederatedData.from_arrays(x, y, offsets, ["a", "b", "a", "c", "d"])
    with pytest.raises(ValueError, match="client_ids must have one id per client"):
        FederatedData.from_arrays(x, y, offsets, ["a"])
    with pytest.raises(TypeError, match="client_ids must be hashable"):
        FederatedData.from_arrays(x, y, offsets, [[1], 2, 3, 4, 5])
    data = FederatedData.from_arrays(x, y, offsets)
    with pytest.raises(KeyError, match="client_id 'nobody' not found"):
        data.client_by_id("nobody")
    with pytest.raises(IndexError, match="position"):
        data.client(5)


def test_sampling_and_subset_errors():
    data, *_ = make_data()
    with pytest.raises(
        ValueError, match=r"num_clients=6 exceeds the population of 5.*replace=False"
    ):
        data.sample_clients(6, seed=0, replace=False)
    with pytest.raises(ValueError, match="num_clients must be a non-negative integer"):
        data.sample_clients(-1, seed=0)
    with pytest.raises(ValueError, match=r"positions must be in \[0, 5\)"):
        data.subset([0, 5])
    with pytest.raises(TypeError, match="positions must be integers"):
        data.subset([0.5])
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(1.0, seed=0)
    with pytest.raises(ValueError, match="test_fraction"):
        data.train_test_split(0, seed=0)
