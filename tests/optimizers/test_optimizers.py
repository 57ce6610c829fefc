"""Functional optimizers: optax and Keras optimizers behind one (init, update) pair."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest

import fedjax_keras as fk
from fedjax_keras.optimizers import Optimizer, as_optimizer, from_optax
from fedjax_keras.testing import assert_trees_all_close, toy_models

PARAMS = {"b": jnp.array([1.0, -2.0]), "a/kernel": jnp.array([[0.5]])}
GRADS = {"b": jnp.array([0.5, 1.0]), "a/kernel": jnp.array([[-1.0]])}


def _sgd_momentum_by_hand(steps, lr=0.1, momentum=0.9):
    """Keras' SGD: v = momentum * v - lr * g; p = p + v (same grads each step)."""
    params, velocity = dict(PARAMS), {k: jnp.zeros_like(v) for k, v in PARAMS.items()}
    for _ in range(steps):
        velocity = {k: momentum * velocity[k] - lr * GRADS[k] for k in PARAMS}
        params = {k: params[k] + velocity[k] for k in PARAMS}
    return params


@pytest.mark.parametrize(
    "given",
    [
        optax.sgd(0.1, momentum=0.9),
        keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: keras.optimizers.SGD(0.1, momentum=0.9),
        lambda: optax.sgd(0.1, momentum=0.9),
        from_optax(optax.sgd(0.1, momentum=0.9)),
    ],
    ids=["optax", "keras", "keras_callable", "optax_callable", "optimizer"],
)
def test_every_accepted_form_gives_sgd_momentum(given):
    optimizer = as_optimizer(given, PARAMS)
    assert isinstance(optimizer, Optimizer)
    params, state = PARAMS, optimizer.init(PARAMS)
    for _ in range(3):
        params, state = optimizer.update(GRADS, state, params)
    assert_trees_all_close(params, _sgd_momentum_by_hand(3), rtol=1e-6, atol=1e-7)


def test_unusable_optimizers_are_type_errors():
    with pytest.raises(TypeError, match=r"must be an optax GradientTransformation.*received 0\.1"):
        as_optimizer(0.1, PARAMS)
    with pytest.raises(TypeError, match="could not be called with no arguments"):
        as_optimizer(lambda lr: optax.sgd(lr), PARAMS)


@pytest.fixture(scope="module")
def no_optimizer_model():
    x, y = np.zeros((2, 4), np.float32), np.zeros(2, np.int32)
    return fk.from_keras_model(toy_models.mlp(), (x, y), "sparse_categorical_crossentropy"), (x, y)


def test_training_without_an_optimizer_is_a_clear_error(no_optimizer_model):
    model, batch = no_optimizer_model
    weights = model.initial_weights
    for use in (
        lambda: model.optimizer,
        lambda: model.init_optimizer_state(weights),
        lambda: model.train_step(weights, (), batch),
    ):
        with pytest.raises(
            fk.errors.NoOptimizerError, match="wrapped without an optimizer: pass optimizer="
        ):
            use()


def test_train_step_accepts_an_optax_transform_per_call(no_optimizer_model):
    model, (x, y) = no_optimizer_model
    weights = model.initial_weights
    transform = optax.sgd(0.5)
    new_weights, _, _ = model.train_step(
        weights, transform.init(weights.trainable), (x, y), optimizer=transform
    )
    grads = jax_grad(model, weights, (x, y))
    expected = {k: weights.trainable[k] - 0.5 * grads[k] for k in grads}
    assert_trees_all_close(new_weights.trainable, expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="as_optimizer"):
        model.train_step(weights, (), (x, y), optimizer=keras.optimizers.SGD(0.1))


def jax_grad(model, weights, batch):
    return jax.grad(lambda t: model.loss(fk.ModelWeights(t, weights.non_trainable), batch))(
        weights.trainable
    )
