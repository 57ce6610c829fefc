"""build_lora_fed_avg: FedAvg over LoRA factors, against Keras' own enable_lora by hand."""

import jax
import keras
import numpy as np
import optax
import pytest

import fedjax_keras as fk
from fedjax_keras.testing import assert_trees_all_close

RNG = np.random.default_rng(0)
DATA = fk.data.FederatedData.from_client_dict(
    {
        c: {"x": RNG.integers(0, 12, (6 + c, 5)).astype(np.int32), "y": RNG.integers(0, 3, 6 + c)}
        for c in range(4)
    }
)
LOSS = "sparse_categorical_crossentropy"
OPTIONS = {"client_optimizer": optax.sgd(0.1), "batch_size": 4, "epochs": 2}


def _net(seed=0) -> keras.Model:
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((5,), dtype="int32")
    hidden = keras.layers.Embedding(12, 6)(tokens)
    hidden = keras.layers.LayerNormalization()(hidden)
    hidden = keras.layers.GlobalAveragePooling1D()(hidden)
    hidden = keras.layers.Dense(6, activation="relu", name="hidden")(hidden)
    return keras.Model(tokens, keras.layers.Dense(3, activation="softmax", name="out")(hidden))


def _lora_by_hand(net: keras.Model) -> keras.Model:
    """Keras' own API, as a user would do it: freeze all, then LoRA on each Dense."""
    for layer in net.layers:
        layer.trainable = False
    for layer in net.layers:
        if isinstance(layer, keras.layers.Dense):
            layer.trainable = True
            layer.enable_lora(2)
    return net


def _run(process, rounds=2):
    state = process.initialize(seed=0)
    for r in range(rounds):
        out = process.next(state, DATA.sample_clients(3, seed=r))
        state = out.state
    return state, out.metrics


@pytest.fixture(scope="module")
def lora_run():
    net = _net()
    keras.utils.set_random_seed(1)  # the same LoRA factor initialisation as the reference
    process = fk.algorithms.build_lora_fed_avg(
        net, DATA.client(0), LOSS, rank=2, layer_names=["hidden", "out"], **OPTIONS
    )
    return process, *_run(process)


def test_equals_fed_avg_on_a_model_given_lora_by_hand(lora_run):
    process, state, _ = lora_run
    net = _net()
    keras.utils.set_random_seed(1)
    reference = fk.algorithms.build_weighted_fed_avg(
        fk.from_keras_model(_lora_by_hand(net), DATA.client(0), LOSS), **OPTIONS
    )
    assert sorted(process.model.initial_weights.trainable) == sorted(
        reference.model.initial_weights.trainable
    )
    expected, _ = _run(reference)
    assert_trees_all_close(
        process.get_model_weights(state), reference.get_model_weights(expected), rtol=0, atol=0
    )


def test_frozen_weights_never_move_and_factors_do(lora_run):
    process, state, _ = lora_run
    start, end = process.model.initial_weights, process.get_model_weights(state)
    assert_trees_all_close(end.non_trainable, start.non_trainable, rtol=0, atol=0)
    moved = jax.tree.map(lambda a, b: bool(np.any(a != b)), end.trainable, start.trainable)
    assert all(moved[p] for p in moved if p.endswith("lora_kernel_b"))


def test_upload_is_the_trainable_weights_at_32_bits(lora_run):
    process, _, metrics = lora_run
    floats = sum(np.size(a) for a in process.model.initial_weights.trainable.values())
    everything = floats + sum(
        np.size(a) for a in process.model.initial_weights.non_trainable.values()
    )
    assert float(metrics["upload/bits_per_client"]) == 32 * floats
    assert floats < everything / 2


def test_merged_keras_model_predicts_as_the_trained_lora_model(lora_run):
    process, state, _ = lora_run
    weights = process.get_model_weights(state)
    merged = process.model.to_keras(weights, merge_lora=True)
    x = DATA.client(1)["x"]
    np.testing.assert_allclose(
        np.asarray(merged(x)), np.asarray(process.model.apply(weights, x)), rtol=1e-5, atol=1e-6
    )
