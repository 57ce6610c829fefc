"""with_example_fields: the same model on {"inputs": x, **fields}; Keras never sees the fields."""

import numpy as np
import pytest
from engine_reference import make_clients, wrap

from fedjax_keras.errors import LabelRangeError
from fedjax_keras.models import split_example_fields, with_example_fields
from fedjax_keras.testing import toy_models


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=111))


def test_the_extended_model_computes_what_the_model_computes(model):
    extended = with_example_fields(model, {"is_test": bool, "domain": np.int32})
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4)).astype(np.float32)
    y = rng.integers(0, 3, 5).astype(np.int32)
    tagged = {"inputs": x, "is_test": np.array([0, 1, 0, 1, 1], bool), "domain": np.arange(5)}
    weights = model.initial_weights
    np.testing.assert_allclose(extended.apply(weights, tagged), model.apply(weights, x))
    plain = {"x": x, "y": y, "mask": np.array([1, 1, 0, 1, 1], np.float32)}
    got = extended.loss(weights, {**plain, "x": tagged})
    assert float(got) == pytest.approx(float(model.loss(weights, plain)), rel=1e-6)
    assert sorted(extended.input_spec["x"]) == ["domain", "inputs", "is_test"]
    assert extended.input_spec["x"]["domain"].shape == (2,)  # the dummy batch's size
    batch, fields = split_example_fields({**plain, "x": tagged})
    assert batch["x"] is x and sorted(fields) == ["domain", "is_test"]
    # Label checks and export still work on the extended model.
    extended.check_labels(make_clients([3, 2]))
    with pytest.raises(LabelRangeError):
        bad = make_clients([2])
        extended.check_labels(type(bad).from_arrays(bad.examples["x"], np.array([0, 7]), [0, 2]))
    assert extended.to_keras(weights).count_params() == model.to_keras(weights).count_params()
    # Extending again replaces the fields rather than nesting them.
    assert sorted(with_example_fields(extended, {"is_test": bool}).input_spec["x"]) == [
        "inputs",
        "is_test",
    ]


def test_reserved_or_missing_fields_are_refused(model):
    with pytest.raises(ValueError, match="other than 'inputs'"):
        with_example_fields(model, {"inputs": bool})
    with pytest.raises(ValueError, match="at least one"):
        with_example_fields(model, {})
    with pytest.raises(TypeError, match="takes a Model"):
        with_example_fields(object(), {"is_test": bool})
