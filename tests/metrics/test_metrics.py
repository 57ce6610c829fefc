"""Functional metrics: sum-then-finalize merging, masking, and Keras as reference."""

import jax
import keras
import numpy as np
import pytest

import fedjax_keras as fk
from fedjax_keras.metrics import FunctionalMetric, MetricSuite, merge_by_sum
from fedjax_keras.testing import toy_models

rng = np.random.RandomState(0)
LOGITS = [rng.randn(5, 3).astype(np.float32), rng.randn(8, 3).astype(np.float32)]
LABELS = [rng.randint(0, 3, 5).astype(np.int32), rng.randint(0, 3, 8).astype(np.int32)]
USER_METRIC = keras.metrics.SparseCategoricalCrossentropy(from_logits=True, name="xent")


def _metrics():
    """Keras objects, a name, a class and a zero-argument callable, in one list."""
    return [
        "accuracy",
        USER_METRIC,
        lambda: keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2"),
        keras.metrics.SparseTopKCategoricalAccuracy,  # a class, instantiated with defaults
    ]


def _keras_reference(logits, labels):
    """Each metric computed by fresh Keras objects, statefully, on the given examples."""
    references = {
        "accuracy": keras.metrics.SparseCategoricalAccuracy(),
        "xent": keras.metrics.SparseCategoricalCrossentropy(from_logits=True),
        "top2": keras.metrics.SparseTopKCategoricalAccuracy(k=2),
        "sparse_top_k_categorical_accuracy": keras.metrics.SparseTopKCategoricalAccuracy(),
    }
    result = {}
    for name, metric in references.items():
        metric.update_state(labels, logits)
        result[name] = float(metric.result())
    return result


@pytest.fixture(scope="module")
def model():
    return fk.from_keras_model(
        toy_models.mlp(),
        (np.zeros((2, 4), np.float32), np.zeros(2, np.int32)),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=_metrics(),
    )


def _state(model, logits, labels, mask=None):
    batch = (np.zeros((len(labels), 4), np.float32), labels) + (() if mask is None else (mask,))
    return model.update_metrics(model.init_metrics(), batch, logits)


def test_metric_names(model):
    assert model.metrics.names == ("accuracy", "xent", "top2", "sparse_top_k_categorical_accuracy")


def test_merged_clients_equal_their_union_and_keras(model):
    merged = model.merge_metrics(
        _state(model, LOGITS[0], LABELS[0]), _state(model, LOGITS[1], LABELS[1])
    )
    union = _state(model, np.concatenate(LOGITS), np.concatenate(LABELS))
    actual = model.finalize_metrics(merged)
    expected = _keras_reference(np.concatenate(LOGITS), np.concatenate(LABELS))
    for name in expected:
        np.testing.assert_allclose(actual[name], expected[name], rtol=1e-5, err_msg=name)
        np.testing.assert_allclose(model.finalize_metrics(union)[name], expected[name], rtol=1e-5)
    # Not the mean of the two clients' accuracies (5 and 8 examples weigh differently).
    per_client = [
        model.finalize_metrics(_state(model, logits, y))["accuracy"]
        for logits, y in zip(LOGITS, LABELS)
    ]
    assert not np.isclose(np.mean(per_client), actual["accuracy"])


def test_masked_examples_do_not_count(model):
    logits = np.concatenate([LOGITS[0], np.full((3, 3), np.nan, np.float32)])
    labels = np.concatenate([LABELS[0], [-1, 99, 0]]).astype(np.int32)
    mask = np.array([1] * 5 + [0] * 3, np.float32)
    padded = model.finalize_metrics(_state(model, logits, labels, mask))
    expected = _keras_reference(LOGITS[0], LABELS[0])
    for name in expected:
        np.testing.assert_allclose(padded[name], expected[name], rtol=1e-5, err_msg=name)


def test_users_metric_object_is_not_updated(model):
    model.update_metrics(model.init_metrics(), (np.zeros((5, 4)), LABELS[0]), LOGITS[0])
    assert all(np.all(np.asarray(v) == 0) for v in USER_METRIC.variables)


def test_metric_update_works_under_jit(model):
    update = jax.jit(lambda s, b, p: model.update_metrics(s, b, p))
    state = update(model.init_metrics(), (np.zeros((5, 4), np.float32), LABELS[0]), LOGITS[0])
    np.testing.assert_allclose(
        model.finalize_metrics(state)["accuracy"],
        np.mean(np.argmax(LOGITS[0], -1) == LABELS[0]),
        rtol=1e-6,
    )


def test_accuracy_name_follows_shapes_like_keras_compile():
    net = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, activation="sigmoid")])
    x, y = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32), np.array([[1.0], [0.0]], np.float32)
    model = fk.from_keras_model(net, (x, y), "binary_crossentropy", metrics=["acc"])
    state = model.update_metrics(model.init_metrics(), (x, y), np.array([[0.9], [0.7]], np.float32))
    np.testing.assert_allclose(model.finalize_metrics(state)["acc"], 0.5)


def test_multi_output_metrics_by_output_name():
    x = {"a": np.zeros((4, 4), np.float32), "b": np.zeros((4, 3), np.float32)}
    y = {"cls": np.array([0, 1, 2, 1], np.int32), "reg": np.arange(4.0, dtype=np.float32)[:, None]}
    model = fk.from_keras_model(
        toy_models.multi_io(),
        (x, y),
        {"cls": keras.losses.SparseCategoricalCrossentropy(True), "reg": "mse"},
        metrics={"cls": ["accuracy"], "reg": [keras.metrics.MeanAbsoluteError()]},
    )
    assert model.metrics.names == ("cls_accuracy", "reg_mean_absolute_error")
    predictions = {
        "cls": np.eye(3, dtype=np.float32)[[0, 1, 0, 0]],
        "reg": np.array([[0.0], [2.0], [2.0], [3.0]], np.float32),
    }
    state = model.update_metrics(model.init_metrics(), (x, y), predictions)
    result = model.finalize_metrics(state)
    np.testing.assert_allclose(result["cls_accuracy"], 0.5)
    np.testing.assert_allclose(result["reg_mean_absolute_error"], 0.25)


def test_metric_suite_on_hand_written_metric():
    count = FunctionalMetric(
        "count",
        init=lambda: np.zeros(()),
        update=lambda s, y, p, m: s + m.sum(),
        merge=merge_by_sum,
        finalize=lambda s: s,
    )
    suite = MetricSuite(((0, count),))
    a = suite.update(suite.init(), [None], [None], np.ones(3))
    b = suite.update(suite.init(), [None], [None], np.array([1.0, 0.0]))
    assert suite.finalize(suite.merge(a, b)) == {"count": 4.0}
