"""Tests of fedjax_keras.testing: the tree assertion and the toy models."""

import numpy as np
import pytest

from fedjax_keras import testing
from fedjax_keras.testing import toy_models


def test_assert_trees_all_close_accepts_close_trees():
    testing.assert_trees_all_close(
        {"a": np.ones(3, np.float32), "b": [np.int32(2)]},
        {"a": np.ones(3, np.float32) + 1e-8, "b": [np.int32(2)]},
    )


def test_assert_trees_all_close_lists_every_mismatching_leaf():
    actual = {"a": np.zeros(3), "b": np.ones(2), "c": np.array([1, 2]), "d": np.ones(1)}
    expected = {
        "a": np.array([0.0, 0.5, 0.0]),
        "b": np.ones(2),
        "c": np.array([1, 3]),
        "d": np.ones(1),
    }
    with pytest.raises(AssertionError) as info:
        testing.assert_trees_all_close(actual, expected, rtol=0, atol=1e-3)
    message = str(info.value)
    assert "2 of 4 leaves differ" in message
    assert "['a']: 1 of 3 elements differ, max |diff| 0.5" in message
    assert "['c']" in message and "['b']" not in message and "['d']" not in message


def test_assert_trees_all_close_checks_structure_and_shapes_first():
    with pytest.raises(AssertionError, match=r"only in actual:   \[\"\['x'\]\"\]"):
        testing.assert_trees_all_close({"x": 1.0, "y": 2.0}, {"y": 2.0, "z": 1.0})
    with pytest.raises(
        AssertionError, match=r"\['w'\]: shape float64\[2\] vs expected float64\[3\]"
    ):
        testing.assert_trees_all_close({"w": np.zeros(2)}, {"w": np.zeros(3)})


def test_assert_trees_all_close_nan_only_equals_nan():
    testing.assert_trees_all_close([np.array([np.nan, 1.0])], [np.array([np.nan, 1.0])])
    with pytest.raises(AssertionError, match="1 of 2 elements differ"):
        testing.assert_trees_all_close([np.array([np.nan, 1.0])], [np.array([0.0, 1.0])])


@pytest.mark.parametrize(
    "build",
    [
        toy_models.mlp,
        toy_models.cnn,
        toy_models.multi_io,
        toy_models.subclassed,
        toy_models.embedding_lstm,
        toy_models.nested,
    ],
)
def test_toy_models_are_deterministic_per_seed(build):
    first, second, other = build(seed=1), build(seed=1), build(seed=2)
    testing.assert_trees_all_close(first.get_weights(), second.get_weights(), rtol=0, atol=0)
    assert not all(np.array_equal(a, b) for a, b in zip(first.get_weights(), other.get_weights()))
    assert not first.compiled
