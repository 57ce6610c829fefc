"""to_keras with LoRA: factors written back, or merged into the kernels as Keras computes them.

The reference is the LoRA model itself: a model written back, or merged, must
predict what ``model.apply`` predicts with the same weights. GPT2 with LoRA (a
keras_hub task) is in test_model_families.py; these are Keras' own layers.
"""

import jax
import keras
import numpy as np
import pytest

import fedjax_keras as fk
from fedjax_keras.testing import assert_trees_all_close

TOKENS = np.random.RandomState(0).randint(0, 12, (4, 5)).astype(np.int32)
Y = np.array([0, 1, 2, 1], np.int32)
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RANK = 2


def _functional(lora: bool, seed: int = 0) -> keras.Model:
    """Embedding, EinsumDense and Dense: the three layers with enable_lora."""
    keras.utils.set_random_seed(seed)
    tokens = keras.Input((5,), dtype="int32")
    hidden = keras.layers.Embedding(12, 6)(tokens)
    hidden = keras.layers.EinsumDense("btd,de->bte", output_shape=(5, 6), bias_axes="e")(hidden)
    logits = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling1D()(hidden))
    model = keras.Model(tokens, logits)
    if lora:
        for layer in model.layers[1:3] + model.layers[-1:]:
            layer.enable_lora(RANK, lora_alpha=3.0)
    return model


@pytest.fixture(scope="module")
def lora_model():
    model = fk.from_keras_model(_functional(lora=True), (TOKENS, Y), LOSS)
    # Keras starts lora_kernel_b at zero; moved factors make the merge matter.
    moved = jax.tree.map(
        lambda a: a + np.random.RandomState(1).randn(*a.shape).astype(a.dtype) * 0.3,
        model.initial_weights.trainable,
    )
    return model, fk.ModelWeights(moved, model.initial_weights.non_trainable)


def _predictions(keras_model):
    return np.asarray(keras_model(TOKENS, training=False))


def test_only_factors_and_biases_are_trainable(lora_model):
    model, _ = lora_model
    names = {path.rsplit("/", 1)[1] for path in model.initial_weights.trainable}
    assert names == {"lora_kernel_a", "lora_kernel_b", "lora_embeddings_a", "lora_embeddings_b"} | {
        "bias"
    }
    assert {path.rsplit("/", 1)[1] for path in model.initial_weights.non_trainable} == {
        "embeddings",
        "kernel",
    }


def test_factors_go_back_into_a_fresh_copy_and_into_a_lora_instance(lora_model):
    model, weights = lora_model
    expected = np.asarray(model.apply(weights, TOKENS))
    for target in (model.to_keras(weights), model.to_keras(weights, _functional(True, seed=4))):
        np.testing.assert_allclose(_predictions(target), expected, rtol=1e-6, atol=1e-6)
        again = fk.from_keras_model(target, (TOKENS, Y), LOSS).initial_weights
        assert_trees_all_close(again, weights, rtol=0, atol=0)


def test_merged_model_has_no_lora_and_predicts_as_the_lora_model(lora_model):
    model, weights = lora_model
    expected = np.asarray(model.apply(weights, TOKENS))
    for target in (
        model.to_keras(weights, merge_lora=True),
        model.to_keras(weights, _functional(False, seed=4), merge_lora=True),
    ):
        assert not any(getattr(layer, "lora_enabled", False) for layer in target.layers)
        assert len(target.trainable_weights) == 5
        np.testing.assert_allclose(_predictions(target), expected, rtol=1e-5, atol=1e-6)


def test_merge_is_kernel_plus_scaled_product_by_hand(lora_model):
    model, weights = lora_model
    merged = model.to_keras(weights, merge_lora=True)
    dense = merged.layers[-1]
    a = weights.trainable["dense/lora_kernel_a"]
    b = weights.trainable["dense/lora_kernel_b"]
    by_hand = weights.non_trainable["dense/kernel"] + 3.0 / RANK * (a @ b)
    np.testing.assert_allclose(np.asarray(dense.kernel), by_hand, rtol=1e-6, atol=1e-7)
    assert not np.allclose(by_hand, weights.non_trainable["dense/kernel"], atol=1e-3)


def test_factors_into_a_model_without_lora_are_refused(lora_model):
    model, weights = lora_model
    with pytest.raises(fk.errors.WeightsMismatchError, match="enable_lora.*merge_lora=True"):
        model.to_keras(weights, _functional(False, seed=4))


def test_merge_into_a_model_with_lora_is_refused(lora_model):
    model, weights = lora_model
    with pytest.raises(fk.errors.WeightsMismatchError, match="without LoRA"):
        model.to_keras(weights, _functional(True, seed=4), merge_lora=True)


def test_a_lora_alpha_other_than_the_trained_one_is_refused(lora_model):
    model, weights = lora_model
    other = _functional(False, seed=4)
    for layer in other.layers[1:3] + other.layers[-1:]:
        layer.enable_lora(RANK)  # alpha defaults to the rank, 2, not 3
    with pytest.raises(fk.errors.WeightsMismatchError, match="lora_alpha 2.*trained with 3"):
        model.to_keras(weights, other)
