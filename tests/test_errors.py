"""Every user mistake from_keras_model and Model reject, with the message checked."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import fedjax_keras as fk
from fedjax_keras import errors
from fedjax_keras.testing import toy_models

X, Y = np.zeros((2, 4), np.float32), np.zeros(2, np.int32)
XM = {"a": np.zeros((2, 4), np.float32), "b": np.zeros((2, 3), np.float32)}
YM = {"cls": Y, "reg": np.zeros((2, 1), np.float32)}
CE = "sparse_categorical_crossentropy"


@pytest.fixture(scope="module")
def multi_io():
    return toy_models.multi_io()


def test_not_a_keras_model_is_a_type_error():
    with pytest.raises(TypeError, match=r"must be a keras\.Model \(Keras 3\); received function"):
        fk.from_keras_model(toy_models.mlp, (X, Y), CE)


def test_compiled_model_is_a_value_error():
    net = toy_models.mlp()
    net.compile(loss=CE)
    with pytest.raises(ValueError, match=r"is compiled.*keras\.models\.clone_model"):
        fk.from_keras_model(net, (X, Y), CE)


def test_loss_dict_with_wrong_keys_is_a_key_error(multi_io):
    with pytest.raises(KeyError, match=r"missing \['reg'\], unexpected \['regression'\]"):
        fk.from_keras_model(multi_io, (XM, YM), {"cls": CE, "regression": "mse"})


@pytest.mark.parametrize(
    "loss_weights, error, match",
    [
        (
            [1.0],
            errors.LossSpecError,
            r"`loss_weights` is a list of length 1.*2 outputs \['cls', 'reg'\]",
        ),
        ({"cls": 1.0}, KeyError, r"`loss_weights` is a dict.*missing \['reg'\]"),
        ({"cls": 1.0, "reg": "heavy"}, errors.LossSpecError, r"for output 'reg' must be a number"),
        (0.5, errors.LossSpecError, r"one weight per output"),
    ],
)
def test_loss_weights_that_do_not_match_the_outputs(multi_io, loss_weights, error, match):
    with pytest.raises(error, match=match):
        fk.from_keras_model(multi_io, (XM, YM), [CE, "mse"], loss_weights=loss_weights)


def test_bad_losses():
    with pytest.raises(errors.LossSpecError, match="knows no loss named 'not_a_loss'"):
        fk.from_keras_model(toy_models.mlp(), (X, Y), "not_a_loss")
    with pytest.raises(errors.LossSpecError, match="reduction=None.*'sum_over_batch_size'"):
        fk.from_keras_model(
            toy_models.mlp(),
            (X, Y),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None),
        )
    with pytest.raises(errors.LossSpecError, match="needs a loss"):
        fk.from_keras_model(toy_models.mlp(), (X, Y))


@pytest.mark.parametrize(
    "dummy_batch, match",
    [
        (([[1.0, 2.0, 3.0, 4.0], [1.0]], Y), r"dummy_batch\['x'\] is a list that does not convert"),
        ((X, np.array(["cat", "dog"])), r"dummy_batch\['y'\] is a ndarray .* dtype <U3"),
        ((np.zeros((2, 5), np.float32), Y), r"dummy_batch\['x'\] does not fit the model's inputs"),
        ([X, Y, Y, Y], r"must be a dict .* or a tuple .*received list of length 4"),
        ({"inputs": X, "y": Y}, r"must have the key 'x'.*unknown \['inputs'\]"),
        ((X, None), r"no labels 'y'"),
    ],
    ids=["ragged", "strings", "wrong_shape", "list", "dict_keys", "no_labels"],
)
def test_dummy_batch_errors_name_the_offending_item(dummy_batch, match):
    with pytest.raises(errors.InvalidBatchError, match=match):
        fk.from_keras_model(toy_models.mlp(), dummy_batch, CE)


def test_dummy_batch_and_input_spec_exclusive():
    import jax

    with pytest.raises(errors.InvalidBatchError, match="exactly one of dummy_batch.*received both"):
        fk.from_keras_model(toy_models.mlp(), (X, Y), CE, input_spec=(X, Y))
    with pytest.raises(errors.InvalidBatchError, match="received neither"):
        fk.from_keras_model(toy_models.mlp(), loss=CE)
    # A batch dimension of None: keras.KerasTensor takes it on every jax; jax.ShapeDtypeStruct
    # only before jax 0.12, which rejects None in its shape.
    spec = (keras.KerasTensor((None, 4), "float32"), keras.KerasTensor((None,), "int32"))
    model = fk.from_keras_model(toy_models.mlp(), loss=CE, input_spec=spec)
    assert model.input_spec["x"].shape == (1, 4)
    spec = (jax.ShapeDtypeStruct((3, 4), np.float32), jax.ShapeDtypeStruct((3,), np.int32))
    model = fk.from_keras_model(toy_models.mlp(), loss=CE, input_spec=spec)
    assert model.input_spec["x"].shape == (3, 4)


def test_labels_that_do_not_match_a_multi_output_model(multi_io):
    model = fk.from_keras_model(multi_io, (XM, YM), [CE, "mse"])
    with pytest.raises(
        errors.InvalidBatchError, match=r"2 outputs \['cls', 'reg'\].*one array of shape \(2,\)"
    ):
        model.loss(model.initial_weights, (XM, Y))


class _PythonStateMetric(keras.metrics.Metric):
    """Keeps its count in a Python attribute, so it cannot be made functional."""

    def __init__(self, name="python_state", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = keras.Variable(0.0, name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.count_seen = float(np.sum(y_true))  # needs concrete values

    def result(self):
        return self.total


@pytest.mark.parametrize(
    "metric, match",
    [
        (_PythonStateMetric, r"'python_state' \(_PythonStateMetric\) could not run as a pure JAX"),
        (keras.metrics.Mean(), r"'mean' \(Mean\) could not run as a pure JAX"),
        (lambda threshold: None, "not a zero-argument one"),
        (lambda: "accuracy", "returned 'accuracy', not a keras.metrics.Metric"),
        ("no_such_metric", "knows no metric named 'no_such_metric'"),
        (3, "received 3"),
    ],
    ids=["python_state", "not_y_true_y_pred", "needs_args", "returns_name", "unknown_name", "int"],
)
def test_metric_that_cannot_be_made_functional(metric, match):
    with pytest.raises(errors.MetricNotFunctionalError, match=match):
        fk.from_keras_model(toy_models.mlp(), (X, Y), CE, metrics=[metric])


class _UncopyableMetric(keras.metrics.Mean):
    def __init__(self, scale):
        super().__init__(name="uncopyable")
        self.scale = scale

    def __deepcopy__(self, memo):
        raise TypeError("no copies")


def test_metric_that_cannot_be_copied():
    with pytest.raises(
        errors.MetricNotFunctionalError, match="neither deep-copied nor rebuilt.*lambda"
    ):
        fk.from_keras_model(toy_models.mlp(), (X, Y), CE, metrics=[_UncopyableMetric(2.0)])


def test_duplicate_metric_names():
    with pytest.raises(errors.MetricNotFunctionalError, match="Two metrics are named 'accuracy'"):
        fk.from_keras_model(toy_models.mlp(), (X, Y), CE, metrics=["accuracy", "accuracy"])


def test_to_keras_into_a_different_architecture_names_the_paths():
    model = fk.from_keras_model(toy_models.mlp(), (X, Y), CE)
    with pytest.raises(
        errors.WeightsMismatchError, match=r"missing \['batch_normalization/beta'.*unexpected \[\]"
    ):
        model.to_keras(model.initial_weights, toy_models.mlp(batch_norm=True))
    with pytest.raises(
        errors.WeightsMismatchError,
        match=r"wrong shape \['dense/bias: weights \(8,\) vs model \(5,\)'",
    ):
        model.to_keras(model.initial_weights, toy_models.mlp(hidden=5))


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["numpy"])
def test_non_jax_keras_backend_names_the_fix(backend):
    script = textwrap.dedent("""
        import keras, numpy as np
        import fedjax_keras as fk
        net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        try:
            fk.from_keras_model(net, (np.zeros((1, 2)), np.zeros((1, 1))), "mse")
        except fk.errors.KerasBackendError as e:
            print("ERROR:", e)
    """)
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )
    assert f"Keras is running on the '{backend}' backend" in result.stdout, result.stderr[-2000:]
    assert "KERAS_BACKEND=jax" in result.stdout
