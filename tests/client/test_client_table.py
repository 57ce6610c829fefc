"""ClientTable: defaults for unseen clients, scatter, write masks, jit, a pytree of arrays."""

import jax
import jax.numpy as jnp
import numpy as np

import fedjax_keras  # noqa: F401
from fedjax_keras.client import ClientTable
from fedjax_keras.testing import assert_trees_all_close

DEFAULT = {"c": np.full((2,), 0.5, np.float32), "n": np.int32(7)}


def _values(rows):
    rows = np.asarray(rows, np.float32)
    return {"c": np.stack([rows, -rows], axis=1), "n": rows.astype(np.int32)}


def _table(population=10):
    return ClientTable.create(DEFAULT, population)


def test_gather_unseen_gives_defaults():
    rows = _table().gather(np.array([0, 4, 9]))
    assert_trees_all_close(
        rows, {"c": np.full((3, 2), 0.5, np.float32), "n": np.full(3, 7, np.int32)}
    )
    empty = _table().gather(np.zeros(0, np.int32))
    assert empty["c"].shape == (0, 2) and empty["n"].shape == (0,)
    assert _table().seen_positions().tolist() == []


def test_scatter_then_gather():
    table = _table().scatter(np.array([1, 2]), _values([1, 2]))
    rows = table.gather(np.array([2, 5, 1]))
    assert_trees_all_close(
        rows,
        {
            "c": np.array([[2, -2], [0.5, 0.5], [1, -1]], np.float32),
            "n": np.array([2, 7, 1], np.int32),
        },
    )
    # Overwrite one, add one.
    table2 = table.scatter(np.array([2, 3]), _values([20, 30]))
    assert_trees_all_close(table2.gather(np.array([1, 2, 3])), _values([1, 20, 30]))
    assert table2.seen_positions().tolist() == [1, 2, 3]


def test_scatter_returns_new_table_old_unchanged():
    table = _table().scatter(np.array([1]), _values([1]))
    table.scatter(np.array([1]), _values([5]))
    assert_trees_all_close(table.gather(np.array([1])), _values([1]))


def test_write_mask_leaves_unwritten_rows_alone():
    """Rows with write=False keep their value and stay unseen: a dropped client's state
    (or an earlier draw of a client drawn twice) is never written."""
    table = _table().scatter(np.array([3]), _values([1]))
    table = table.scatter(
        np.array([3, 4, 5]), _values([10, 20, 30]), np.array([False, True, False])
    )
    expected = {
        "c": np.array([[1, -1], [20, -20], [0.5, 0.5]], np.float32),
        "n": np.array([1, 20, 7], np.int32),
    }
    assert_trees_all_close(table.gather(np.array([3, 4, 5])), expected)
    assert table.seen_positions().tolist() == [3, 4]


def test_a_table_is_a_pytree_that_jit_traces_once():
    traces = []

    @jax.jit
    def touch(table, positions, values):
        traces.append(1)
        return table.scatter(positions, values)

    table = _table()
    for round_num in range(5):
        table = touch(table, np.array([round_num, 9]), _values([round_num, 9]))
    assert len(traces) == 1
    assert_trees_all_close(table.gather(np.array([0, 4, 9])), _values([0, 4, 9]))
    doubled = jax.tree.map(lambda a, b: a + b, table, table)  # tree.map over two tables
    assert doubled.rows["n"].shape == (10,)


def test_with_default_keeps_stored_rows():
    table = _table().scatter(np.array([1]), _values([1]))
    table = table.with_default({"c": jnp.zeros(2), "n": jnp.int32(0)})
    assert_trees_all_close(
        table.gather(np.array([0, 1])),
        {"c": np.array([[0, 0], [1, -1]], np.float32), "n": np.array([0, 1], np.int32)},
    )
