"""Mixed precision (a Keras dtype policy such as ``mixed_bfloat16``): bf16 compute, float32 state.

Under ``keras.config.set_dtype_policy('mixed_bfloat16')`` Keras keeps every
variable in float32 and computes the layers in bfloat16. Wrapped, the model
keeps that split: the trainable weights, the gradients and so the clients'
deltas, the aggregate and the server optimizer are float32, and only the
convolutions and matmuls run in bfloat16. References: Keras' own
``train_on_batch`` under the same policy for one step (to bf16 rounding: both
round to bf16, in a different order of operations), and the plain float32
model for whole rounds (they differ by bf16 rounding, a few percent of the
update).
"""

import jax
import keras
import numpy as np
import optax
import pytest

import fedjax_keras as fk
from fedjax_keras import algorithms as alg
from fedjax_keras.algorithms import FederatedProcess, fed_avg
from fedjax_keras.testing import assert_trees_all_close

ENGINE = {"batch_size": 4, "shuffle": False, "chunk_size": 4}
SIZES = (6, 4, 8, 5)


def _cnn(policy: str) -> keras.Model:
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(0)
        return keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(4, 3, activation="relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(10),
                # Logits in float32: the loss (a softmax) is computed at full precision.
                keras.layers.Activation("linear", dtype="float32"),
            ]
        )
    finally:
        keras.config.set_dtype_policy(previous)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(scope="module")
def arrays():
    rng = np.random.default_rng(0)
    n = sum(SIZES)
    x = rng.normal(size=(n, 8, 8, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    return x, y, np.concatenate([[0], np.cumsum(SIZES)])


@pytest.fixture(scope="module")
def models(arrays):
    x, y, _ = arrays
    wrap = (
        lambda net: fk.from_keras_model(  # noqa: E731
            net, {"x": x[:2], "y": y[:2]}, loss=_loss(), optimizer=optax.sgd(0.1)
        )
    )
    return {"mixed": wrap(_cnn("mixed_bfloat16")), "float32": wrap(_cnn("float32"))}


@pytest.fixture(scope="module")
def data(arrays):
    return fk.data.FederatedData.from_arrays(*arrays)


def _rounds(model, data, runner, rounds=2):
    process = FederatedProcess(model, fed_avg(model, optax.sgd(0.1)), runner=runner, **ENGINE)
    state = process.initialize(0)
    for _ in range(rounds):
        out = process.next(state, data)
        state = out.state
    return out


def test_weights_stay_float32_and_the_layers_compute_in_bfloat16(models, arrays):
    model, x = models["mixed"], arrays[0]
    dtypes = {w.dtype for w in jax.tree.leaves(model.initial_weights)}
    assert dtypes == {np.dtype("float32")}
    program = str(jax.make_jaxpr(lambda w: model.apply(w, x[:2]))(model.initial_weights))
    convolution = next(line for line in program.splitlines() if "conv_general_dilated" in line)
    assert "bf16[" in convolution.split("=")[0]
    assert model.apply(model.initial_weights, x[:2]).dtype == np.float32
    batch = {"x": x[:4], "y": arrays[1][:4]}
    grads = jax.grad(lambda t: model.loss(model.initial_weights._replace(trainable=t), batch))(
        model.initial_weights.trainable
    )
    assert {g.dtype for g in jax.tree.leaves(grads)} == {np.dtype("float32")}


def test_one_step_equals_keras_train_on_batch_under_the_same_policy(models, arrays):
    model, (x, y, _) = models["mixed"], arrays
    reference = _cnn("mixed_bfloat16")
    reference.set_weights(model.to_keras(model.initial_weights).get_weights())
    reference.compile(loss=_loss(), optimizer=keras.optimizers.SGD(0.1))
    reference.train_on_batch(x[:4], y[:4])
    weights, _, _ = model.train_step(
        model.initial_weights,
        model.init_optimizer_state(model.initial_weights),
        {"x": x[:4], "y": y[:4]},
    )
    start = model.to_keras(model.initial_weights).get_weights()
    trained = zip(model.to_keras(weights).get_weights(), reference.get_weights(), start)
    for ours, theirs, before in trained:
        # Both round the activations and gradients to bf16, in a different order of
        # operations: the steps agree to bf16 rounding (8 bits), not to float32's.
        ours, theirs = ours - before, theirs - before
        assert np.linalg.norm(ours - theirs) <= 0.02 * np.linalg.norm(theirs)


@pytest.mark.parametrize("runner", ["vmap", "sequential"])
def test_a_round_is_the_float32_round_to_bfloat16_rounding(models, data, runner):
    mixed = _rounds(models["mixed"], data, runner)
    full = _rounds(models["float32"], data, runner)
    assert {w.dtype for w in jax.tree.leaves(mixed.state.model)} == {np.dtype("float32")}
    start = models["float32"].initial_weights.trainable
    for name, w in mixed.state.model.trainable.items():
        update, reference = w - start[name], full.state.model.trainable[name] - start[name]
        # bf16 keeps 8 bits of mantissa: the updates agree to a few percent.
        assert np.linalg.norm(update - reference) <= 0.05 * np.linalg.norm(reference), name
    assert mixed.metrics["loss"] == pytest.approx(full.metrics["loss"], rel=2e-2)


def test_the_executors_agree_under_mixed_precision(models, data):
    start = models["mixed"].initial_weights.trainable
    vmap = _rounds(models["mixed"], data, "vmap").state.model.trainable
    sequential = _rounds(models["mixed"], data, "sequential").state.model.trainable
    # The same bf16 operations, batched differently (one vmapped convolution, or one
    # per client): their updates agree to bf16 rounding.
    for name in start:
        a, b = vmap[name] - start[name], sequential[name] - start[name]
        assert np.linalg.norm(a - b) <= 0.05 * np.linalg.norm(b), name


def test_a_sweep_under_mixed_precision_equals_its_runs(models, data):
    model = models["mixed"]
    sweep = fk.sweep(
        lambda c, s: alg.build_weighted_fed_avg(model, c, s, runner="vmap", **ENGINE),
        seeds=[0, 1],
        client_learning_rates=[0.1, 0.05],
    )
    states = sweep.initialize()
    for _ in range(2):
        states = sweep.next(states, data).state
    for k, lr in enumerate([0.1, 0.05]):
        process = alg.build_weighted_fed_avg(model, optax.sgd(lr), runner="vmap", **ENGINE)
        state = process.initialize(k)
        for _ in range(2):
            state = process.next(state, data).state
        assert_trees_all_close(sweep.run_state(states, k).model, state.model, 1e-5, 1e-6)
