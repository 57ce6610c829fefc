"""jit / vmap / grad over the wrapped model, Dropout randomness, and padding.

The reference for vmapped clients is a Python loop over the same clients with
the same keys; the reference for a padded batch is the same batch unpadded.
"""

import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fedjax_keras as fk
from fedjax_keras.testing import assert_trees_all_close, toy_models

TOL = {"rtol": 1e-5, "atol": 1e-6}
CLIENTS = 3
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _batch(rng, size):
    return rng.randn(size, 4).astype(np.float32), rng.randint(0, 3, size).astype(np.int32)


@pytest.fixture(scope="module")
def dropout_model():
    net = toy_models.mlp(dropout=0.5, l2=0.01)
    x, y = _batch(np.random.RandomState(0), 4)
    return fk.from_keras_model(net, (x, y), LOSS, metrics=["accuracy"], optimizer=optax.sgd(0.1))


@pytest.fixture(scope="module")
def clients():
    """[clients, ...] weights (each client perturbed), data and keys."""
    rng = np.random.RandomState(1)
    xs, ys = zip(*[_batch(rng, 5) for _ in range(CLIENTS)])
    return np.stack(xs), np.stack(ys), jax.random.split(jax.random.key(7), CLIENTS)


def _stacked_weights(model):
    def perturb(leaf):
        offsets = 0.1 * jnp.arange(CLIENTS, dtype=leaf.dtype).reshape((-1,) + (1,) * leaf.ndim)
        return leaf[None] + offsets

    return jax.tree.map(perturb, model.initial_weights)


def _client(tree, i):
    return jax.tree.map(lambda leaf: leaf[i], tree)


def test_vmapped_loss_grad_and_metrics_equal_a_loop_over_clients(dropout_model, clients):
    model = dropout_model
    xs, ys, keys = clients
    weights = _stacked_weights(model)

    def client_fn(w, x, y, key):
        loss, grads = jax.value_and_grad(
            lambda t: model.loss(fk.ModelWeights(t, w.non_trainable), (x, y), rng=key)
        )(w.trainable)
        predictions = model.apply(w, x)
        metrics = model.update_metrics(model.init_metrics(), (x, y), predictions)
        return loss, grads, predictions, metrics

    vmapped = jax.jit(jax.vmap(client_fn))(weights, xs, ys, keys)
    single = jax.jit(client_fn)
    looped = [single(_client(weights, i), xs[i], ys[i], keys[i]) for i in range(CLIENTS)]
    assert_trees_all_close(vmapped, jax.tree.map(lambda *a: jnp.stack(a), *looped), **TOL)
    # Sum-then-finalize over the clients axis equals the metric on all examples.
    merged = jax.tree.map(lambda s: jnp.sum(s, axis=0), vmapped[3])
    per_client_hits = [np.argmax(looped[i][2], -1) == ys[i] for i in range(CLIENTS)]
    np.testing.assert_allclose(
        model.finalize_metrics(merged)["accuracy"], np.mean(per_client_hits), rtol=1e-6
    )


def test_vmapped_train_step_equals_a_loop(dropout_model, clients):
    model = dropout_model
    xs, ys, keys = clients
    weights = _stacked_weights(model)
    states = jax.vmap(model.init_optimizer_state)(weights)

    def step(w, s, x, y, key):
        return model.train_step(w, s, (x, y), rng=key)

    vmapped = jax.jit(jax.vmap(step))(weights, states, xs, ys, keys)
    single = jax.jit(step)
    looped = [
        single(_client(weights, i), _client(states, i), xs[i], ys[i], keys[i])
        for i in range(CLIENTS)
    ]
    assert_trees_all_close(vmapped, jax.tree.map(lambda *a: jnp.stack(a), *looped), **TOL)


# ----------------------------------------------------------------- randomness
@pytest.fixture(scope="module")
def dropout_only():
    """A model that is just Dropout(0.5): outputs are 0 or 2 * inputs."""
    net = keras.Sequential([keras.Input((200,)), keras.layers.Dropout(0.5)])
    x = np.random.RandomState(2).uniform(1.0, 2.0, (2, 200)).astype(np.float32)
    model = fk.from_keras_model(net, (x, np.zeros((2, 200), np.float32)), "mse")
    return model, x, net


def _dropped(model, x, key):
    predictions, _ = model.apply(model.initial_weights, x, training=True, rng=key)
    return np.asarray(predictions) == 0


def test_dropout_masks_come_from_rng_only(dropout_only):
    model, x, net = dropout_only
    seed_state_before = [np.array(v) for v in net.non_trainable_variables]
    assert model.has_randomness
    predictions, _ = model.apply(model.initial_weights, x, training=True, rng=jax.random.key(0))
    predictions = np.asarray(predictions)
    kept = predictions != 0
    np.testing.assert_allclose(predictions[kept], 2 * x[kept], rtol=1e-6)  # Keras' 1/(1-rate)
    assert 0.35 < 1 - kept.mean() < 0.65
    same = _dropped(model, x, jax.random.key(0))
    np.testing.assert_array_equal(same, ~kept)
    other = _dropped(model, x, jax.random.key(1))
    assert (other != same).mean() > 0.3
    # Inference is deterministic and needs no key; the Keras seed state is untouched.
    np.testing.assert_array_equal(model.apply(model.initial_weights, x), x)
    assert_trees_all_close(
        [np.array(v) for v in net.non_trainable_variables], seed_state_before, rtol=0, atol=0
    )


def test_vmapped_clients_with_different_keys_never_share_masks(dropout_only):
    model, x, _ = dropout_only
    keys = jax.random.split(jax.random.key(3), 4)
    masks = np.asarray(jax.vmap(lambda k: jnp.asarray(_dropped_traced(model, x, k)))(keys))
    for i in range(4):
        np.testing.assert_array_equal(masks[i], _dropped(model, x, keys[i]))  # loop reference
        for j in range(i):
            assert (masks[i] != masks[j]).mean() > 0.3
    same_key = jax.vmap(lambda k: _dropped_traced(model, x, k))(jnp.stack([keys[0]] * 2))
    np.testing.assert_array_equal(same_key[0], same_key[1])


def _dropped_traced(model, x, key):
    predictions, _ = model.apply(model.initial_weights, x, training=True, rng=key)
    return predictions == 0


def test_training_without_rng_is_an_error_only_for_random_layers(dropout_only):
    model, x, _ = dropout_only
    with pytest.raises(ValueError, match=r"random layers \(dropout/seed_generator\).*rng="):
        model.apply(model.initial_weights, x, training=True)
    # An LSTM owns a seed generator but draws nothing without (recurrent) dropout.
    tokens = np.zeros((2, 5), np.int32)
    lstm = fk.from_keras_model(toy_models.embedding_lstm(), (tokens, np.zeros(2, np.int32)), LOSS)
    assert not lstm.has_randomness
    lstm.loss(lstm.initial_weights, (tokens, np.zeros(2, np.int32)), training=True)


# -------------------------------------------------------------------- padding
@pytest.fixture(scope="module")
def plain_model():
    """No Dropout or BatchNorm: batch statistics are not padding-invariant."""
    net = toy_models.mlp(l2=0.01)
    x, y = _batch(np.random.RandomState(0), 4)
    return fk.from_keras_model(
        net,
        (x, y),
        LOSS,
        metrics=["accuracy", keras.metrics.SparseCategoricalCrossentropy(from_logits=True)],
    )


def _loss_grads_metrics(model, batch):
    return _jitted_loss_grads_metrics(model, batch)


@functools.partial(jax.jit, static_argnums=0)
def _jitted_loss_grads_metrics(model, batch):
    weights = model.initial_weights
    (loss, output), grads = jax.value_and_grad(model.loss_and_output, has_aux=True)(
        weights.trainable, weights.non_trainable, batch
    )
    metrics = model.update_metrics(model.init_metrics(), batch, output.predictions)
    return loss, grads, model.finalize_metrics(metrics), output.num_examples


garbage = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, 0.0, -7.0])


# Few sizes, so that the jitted reference compiles a handful of shapes only;
# hypothesis varies the padding's position and contents freely.
@settings(max_examples=25, deadline=None)
@given(
    size=st.sampled_from([1, 5]),
    padding=st.sampled_from([0, 3]),
    fill=garbage,
    bad_label=st.sampled_from([0, 2, -5, 1000]),
    seed=st.integers(0, 2**16),
)
def test_padded_examples_change_nothing(plain_model, size, padding, fill, bad_label, seed):
    rng = np.random.RandomState(seed)
    x, y = _batch(rng, size)
    total = size + padding
    real_rows = np.sort(rng.choice(total, size, replace=False))
    x_padded = np.full((total, 4), fill, np.float32)
    y_padded = np.full((total,), bad_label, np.int32)
    mask = np.zeros(total, np.float32)
    x_padded[real_rows], y_padded[real_rows], mask[real_rows] = x, y, 1.0
    expected = _loss_grads_metrics(plain_model, (x, y))
    actual = _loss_grads_metrics(plain_model, {"x": x_padded, "y": y_padded, "mask": mask})
    assert_trees_all_close(actual, expected, **TOL)
    assert int(actual[3]) == size


def test_padded_tokens_out_of_vocabulary_change_nothing():
    tokens = np.random.RandomState(3).randint(0, 10, (3, 5)).astype(np.int32)
    labels = np.array([0, 1, 1], np.int32)
    model = fk.from_keras_model(toy_models.embedding_lstm(), (tokens, labels), LOSS)
    padded_tokens = np.concatenate([tokens, np.full((2, 5), 10**6, np.int32)])
    padded = (padded_tokens, np.array([0, 1, 1, 9, -1], np.int32), np.array([1, 1, 1, 0, 0]))
    grad = jax.grad(lambda t, b: model.loss(fk.ModelWeights(t, {}), b))
    assert_trees_all_close(
        grad(model.initial_weights.trainable, padded),
        grad(model.initial_weights.trainable, (tokens, labels)),
        **TOL,
    )


@pytest.mark.parametrize(
    "optimizer",
    [optax.adam(0.1), keras.optimizers.SGD(0.1, momentum=0.9), keras.optimizers.Adam(0.1)],
    ids=["optax_adam", "keras_sgd_momentum", "keras_adam"],
)
def test_all_masked_step_leaves_weights_and_optimizer_state_unchanged(optimizer):
    net = toy_models.mlp(batch_norm=True)
    x, y = _batch(np.random.RandomState(4), 4)
    model = fk.from_keras_model(net, (x, y), LOSS, optimizer=optimizer)
    step = jax.jit(model.train_step)
    weights = model.initial_weights
    # One real step first, so that momentum and step counters are non-zero.
    weights, state, _ = step(weights, model.init_optimizer_state(weights), (x, y))
    garbage_x = np.full_like(x, np.nan)
    new_weights, new_state, output = step(weights, state, (garbage_x, y, np.zeros(4)))
    assert_trees_all_close((new_weights, new_state), (weights, state), rtol=0, atol=0)
    assert int(output.num_examples) == 0 and np.isfinite(output.loss)
