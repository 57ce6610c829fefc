"""ClientStateStore: defaults for unseen clients, scatter, growth, last wins, placement."""

import jax
import numpy as np
import pytest

import fedjax_keras  # noqa: F401
from fedjax_keras.client import ClientStateStore
from fedjax_keras.testing import assert_trees_all_close

PLACEMENTS = ["device", "host"]
DEFAULT = {"c": np.full((2,), 0.5, np.float32), "n": np.int32(7)}


def _values(rows):
    rows = np.asarray(rows, np.float32)
    return {"c": np.stack([rows, -rows], axis=1), "n": rows.astype(np.int32)}


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_gather_unseen_gives_defaults(placement):
    store = ClientStateStore(DEFAULT, placement)
    rows = store.gather(["a", "b", 3])
    assert_trees_all_close(
        rows, {"c": np.full((3, 2), 0.5, np.float32), "n": np.full(3, 7, np.int32)}
    )
    empty = store.gather([])
    assert empty["c"].shape == (0, 2) and empty["n"].shape == (0,)
    assert len(store) == 0


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_scatter_then_gather(placement):
    store = ClientStateStore(DEFAULT, placement).scatter(["a", "b"], _values([1, 2]))
    rows = store.gather(["b", "new", "a"])
    assert_trees_all_close(
        rows,
        {
            "c": np.array([[2, -2], [0.5, 0.5], [1, -1]], np.float32),
            "n": np.array([2, 7, 1], np.int32),
        },
    )
    # Overwrite one, add one.
    store2 = store.scatter(["b", "c"], _values([20, 30]))
    assert_trees_all_close(store2.gather(["a", "b", "c"]), _values([1, 20, 30]))
    assert sorted(store2.client_ids) == ["a", "b", "c"] and len(store2) == 3


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_scatter_returns_new_store_old_unchanged(placement):
    store = ClientStateStore(DEFAULT, placement).scatter(["a"], _values([1]))
    store.scatter(["a"], _values([5]))
    assert_trees_all_close(store.gather(["a"]), _values([1]))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_growth_keeps_every_row(placement):
    store = ClientStateStore(DEFAULT, placement)
    for begin in range(0, 40, 7):  # grows past several capacities
        ids = list(range(begin, min(begin + 7, 40)))
        store = store.scatter(ids, _values(ids))
    assert len(store) == 40
    assert_trees_all_close(store.gather(list(range(39, -1, -1))), _values(range(39, -1, -1)))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_duplicate_ids_last_value_wins(placement):
    store = ClientStateStore(DEFAULT, placement).scatter(["x"], _values([1]))
    ids = ["x", "y"] * 40 + ["x"]
    store = store.scatter(ids, _values(range(len(ids))))
    assert_trees_all_close(store.gather(["x", "y"]), _values([len(ids) - 1, len(ids) - 2]))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_placement(placement):
    store = ClientStateStore(DEFAULT, placement).scatter([1, 2], _values([1, 2]))
    rows = store.gather([2, 9])
    for leaf in jax.tree.leaves(rows):
        if placement == "device":
            assert isinstance(leaf, jax.Array)
        else:
            assert isinstance(leaf, np.ndarray) and not isinstance(leaf, jax.Array)


def test_bad_placement_is_rejected():
    with pytest.raises(ValueError, match="placement"):
        ClientStateStore(DEFAULT, "gpu")
