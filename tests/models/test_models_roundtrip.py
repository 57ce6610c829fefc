"""to_keras: weights written back by structural path; frozen layers stay frozen."""

import jax
import keras
import numpy as np
import optax
import pytest

import fedjax_keras as fk
from fedjax_keras.testing import assert_trees_all_close, toy_models

X = np.random.RandomState(0).randn(4, 4).astype(np.float32)
Y = np.array([0, 1, 2, 1], np.int32)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module", params=["nested", "subclassed", "frozen"])
def trained(request):
    build = {
        "nested": toy_models.nested,
        "subclassed": toy_models.subclassed,
        "frozen": lambda seed=0: toy_models.mlp(freeze_first=True, seed=seed),
    }[request.param]
    model = fk.from_keras_model(build(), (X, Y), LOSS, optimizer=optax.sgd(0.5))
    weights = model.initial_weights
    weights, _, _ = model.train_step(weights, model.init_optimizer_state(weights), (X, Y))
    return request.param, build, model, weights


def test_round_trip_is_exact_including_batch_norm_statistics(trained):
    name, _build, model, weights = trained
    keras_model = model.to_keras(weights)
    rewrapped = fk.from_keras_model(keras_model, (X, Y), LOSS)
    assert_trees_all_close(rewrapped.initial_weights, weights, rtol=0, atol=0)
    if name != "frozen":
        assert any("moving_mean" in p for p in weights.non_trainable)
    np.testing.assert_allclose(keras_model(X), model.apply(weights, X), rtol=1e-6)


def test_written_by_path_not_by_order(trained):
    _, build, model, weights = trained
    shuffled = fk.ModelWeights(
        dict(reversed(list(weights.trainable.items()))),
        dict(reversed(list(weights.non_trainable.items()))),
    )
    other_instance = build(seed=5)  # same architecture, other weights and layer names
    written = model.to_keras(shuffled, other_instance)
    assert written is other_instance
    assert_trees_all_close(
        written.get_weights(), model.to_keras(weights).get_weights(), rtol=0, atol=0
    )


def test_frozen_layer_stays_frozen():
    net = toy_models.mlp(freeze_first=True)
    model = fk.from_keras_model(net, (X, Y), LOSS, optimizer=optax.sgd(0.5))
    weights = model.initial_weights
    assert sorted(weights.non_trainable) == ["dense/bias", "dense/kernel"]
    assert sorted(weights.trainable) == ["dense_1/bias", "dense_1/kernel"]
    new, _, _ = jax.jit(model.train_step)(weights, model.init_optimizer_state(weights), (X, Y))
    assert_trees_all_close(new.non_trainable, weights.non_trainable, rtol=0, atol=0)
    assert not np.allclose(new.trainable["dense_1/kernel"], weights.trainable["dense_1/kernel"])
    assert not model.to_keras(new).layers[0].trainable


def test_subclassed_model_built_with_build_shape():
    """model.build(shape) marks a subclassed model built without building its layers."""
    net = toy_models.SubclassedMLP()
    net.build((None, 4))
    model = fk.from_keras_model(net, (X, Y), LOSS)
    assert len(model.initial_weights.trainable) == 6
    np.testing.assert_allclose(model.apply(model.initial_weights, X), net(X), rtol=1e-6)


class LayerScale(keras.layers.Layer):
    """LayerScale-like: weights made with ``add_weight()`` and no name (ConvNeXt's)."""

    def build(self, shape):
        self.gamma = self.add_weight(shape=(shape[-1],), initializer="ones")
        self.beta = self.add_weight(shape=(shape[-1],), initializer="zeros")

    def call(self, x):
        return x * self.gamma + self.beta


def _with_unnamed_variables():
    inputs = keras.Input((4,))
    hidden = LayerScale()(keras.layers.Dense(3)(inputs))
    return keras.Model(inputs, keras.layers.Dense(3)(LayerScale()(hidden)))


def test_unnamed_variables_match_between_instances_whatever_keras_numbered_them():
    # Keras names them variable_<n> from a process-wide counter: every instance differs.
    model = fk.from_keras_model(_with_unnamed_variables(), (X, Y), LOSS, optimizer=optax.sgd(0.5))
    assert [p for p in model.initial_weights.trainable if "scale" in p] == [
        "layer_scale/variable",
        "layer_scale/variable_1",
        "layer_scale_1/variable",
        "layer_scale_1/variable_1",
    ]
    weights = model.initial_weights
    weights, _, _ = model.train_step(weights, model.init_optimizer_state(weights), (X, Y))
    for target in (model.to_keras(weights), model.to_keras(weights, _with_unnamed_variables())):
        np.testing.assert_allclose(
            np.asarray(target(X)), np.asarray(model.apply(weights, X)), rtol=1e-6, atol=1e-6
        )
        again = fk.from_keras_model(target, (X, Y), LOSS).initial_weights
        assert_trees_all_close(again, weights, rtol=0, atol=0)


@pytest.mark.slow
def test_convnext_weights_go_back_into_a_second_instance():
    # keras.applications' LayerScale is the unnamed case above, at scale.
    def build():
        return keras.applications.ConvNeXtTiny(
            weights=None, input_shape=(32, 32, 3), classes=10, include_preprocessing=False
        )

    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
    model = fk.from_keras_model(build(), (x, np.array([0, 1], np.int32)), LOSS)
    target = model.to_keras(model.initial_weights, build())
    for a, b in zip(target.get_weights(), model.to_keras(model.initial_weights).get_weights()):
        np.testing.assert_array_equal(a, b)
