"""One client's local update (start / step / finish in a scan) against `Model.train_step`."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from engine_reference import make_clients, sliced_batches, wrap

import fedjax_keras  # noqa: F401
from fedjax_keras.client import (
    ClientBatchArrays,
    ClientProgram,
    client_key,
    start_training,
    step_key,
    training_step,
)
from fedjax_keras.data import plan_cohort
from fedjax_keras.models import ModelWeights
from fedjax_keras.optimizers import from_optax
from fedjax_keras.testing import assert_trees_all_close, toy_models

ADAM = from_optax(optax.adam(0.05))
BATCH = 3


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(dropout=0.3, seed=4))


def _program(model, optimizer, correction=None):
    step = training_step(model, optimizer, correction)
    return ClientProgram(
        start=lambda broadcast, state: start_training(model, optimizer, broadcast),
        step=step,
        finish=lambda carry, broadcast, state: carry,
    )


def _padded(client, num_steps):
    """The client's batches padded (with garbage, masked out) to ``num_steps`` steps."""
    plan = plan_cohort(client, batch_size=BATCH, shuffle=False, step_buckets=[num_steps])
    (chunk,) = plan.chunks()
    x, mask = chunk.x[0].copy(), chunk.mask[0]
    x[~mask] = 1e3  # padding must not matter whatever it holds
    return ClientBatchArrays(x, chunk.y[0], mask)


@pytest.fixture(scope="module")
def run_adam(model):
    return jax.jit(_program(model, ADAM).run)


def test_scan_equals_train_step_loop(model, run_adam):
    """All carry fields: weights, Adam state, loss sum, example and step counts."""
    client = make_clients([8], seed=1)
    key = client_key(jax.random.PRNGKey(3), jnp.int32(0), jnp.int32(3))
    carry = run_adam(model.initial_weights, _padded(client, 8), key, ())
    data = client.client(0)
    batches = sliced_batches(data["x"], data["y"], BATCH)
    keys = [step_key(key, s) for s in range(len(batches))]
    # The reference: Model.train_step batch by batch; loss_sum adds each step's
    # loss (before the step) times its example count.
    step = jax.jit(lambda w, st, b, k: model.train_step(w, st, b, rng=k, optimizer=ADAM))
    weights, state, loss_sum = (
        model.initial_weights,
        ADAM.init(model.initial_weights.trainable),
        0.0,
    )
    for batch, k in zip(batches, keys):
        weights, state, output = step(weights, state, batch, k)
        loss_sum += float(output.loss) * len(batch["y"])
    assert_trees_all_close(carry.weights, weights, rtol=1e-5, atol=1e-6)
    assert_trees_all_close(carry.optimizer_state, state, rtol=1e-5, atol=1e-6)
    # Adam's step counter saw exactly the three real steps.
    assert int(carry.optimizer_state[0].count) == 3
    assert int(carry.num_examples) == 8 and int(carry.num_steps) == 3
    assert float(carry.loss_sum) == pytest.approx(loss_sum, rel=1e-5)


def test_padded_steps_are_no_ops(model, run_adam):
    """Same client padded to 3 or 8 steps: identical carry, optimizer state included."""
    client = make_clients([7], seed=2)
    key = jax.random.PRNGKey(0)
    short = run_adam(model.initial_weights, _padded(client, 3), key, ())
    long = run_adam(model.initial_weights, _padded(client, 8), key, ())
    assert_trees_all_close(long, short, rtol=0, atol=0)


def test_empty_client_changes_nothing(model, run_adam):
    client = make_clients([0], seed=2)
    carry = run_adam(model.initial_weights, _padded(client, 8), jax.random.PRNGKey(0), ())
    assert_trees_all_close(carry.weights, model.initial_weights, rtol=0, atol=0)
    assert int(carry.num_examples) == 0 and int(carry.num_steps) == 0
    assert float(carry.loss_sum) == 0.0
    assert int(carry.optimizer_state[0].count) == 0


def test_keys_change_dropout_masks(model, run_adam):
    data = _padded(make_clients([6], seed=3), 2)
    a = run_adam(model.initial_weights, data, jax.random.PRNGKey(0), ())
    b = run_adam(model.initial_weights, data, jax.random.PRNGKey(1), ())
    assert not np.allclose(a.weights.trainable["dense/kernel"], b.weights.trainable["dense/kernel"])


def test_grad_correction_is_added_to_the_gradient():
    """SGD on grad + correction, checked against a hand-written update."""
    model = wrap(toy_models.mlp(seed=5))
    lr, shift = 0.1, 0.25
    sgd = from_optax(optax.sgd(lr))

    def correction(grads, trainable, context):
        broadcast, _ = context
        return jax.tree.map(
            lambda g, w, w0: g + shift * (w - w0) + 1.0, grads, trainable, broadcast.trainable
        )

    client = make_clients([5], seed=6)
    carry = jax.jit(_program(model, sgd, correction).run)(
        model.initial_weights, _padded(client, 4), jax.random.PRNGKey(0), ()
    )
    data = client.client(0)
    w0 = model.initial_weights
    trainable = dict(w0.trainable)
    grad = jax.grad(lambda t, b: model.loss(ModelWeights(t, w0.non_trainable), b))
    for batch in sliced_batches(data["x"], data["y"], BATCH):
        g = grad(trainable, batch)
        trainable = {
            k: trainable[k] - lr * (g[k] + shift * (trainable[k] - w0.trainable[k]) + 1.0)
            for k in trainable
        }
    assert_trees_all_close(carry.weights.trainable, trainable, rtol=1e-5, atol=1e-6)
