"""enable_lora on any Keras model: which weights train, and the errors."""

import keras
import numpy as np
import pytest

import fedjax_keras as fk


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    tokens = keras.Input((5,), dtype="int32")
    hidden = keras.layers.Embedding(12, 6, name="embed")(tokens)
    hidden = keras.layers.LayerNormalization(name="norm")(hidden)
    block = keras.Sequential(
        [keras.layers.Dense(6, name="inner"), keras.layers.BatchNormalization(name="bn")],
        name="block",
    )
    hidden = keras.layers.GlobalAveragePooling1D()(block(hidden))
    return keras.Model(tokens, keras.layers.Dense(3, name="head")(hidden))


def _ends(paths):
    return sorted(path.rsplit("/", 1)[1] for path in paths)


def test_every_supported_layer_by_default_and_everything_else_frozen():
    model = _model()
    assert fk.models.enable_lora(model, 2) == ("embed", "inner", "head")
    wrapped = fk.from_keras_model(
        model,
        (np.zeros((2, 5), np.int32), np.zeros(2, np.int32)),
        "sparse_categorical_crossentropy",
    )
    trainable = wrapped.initial_weights.trainable
    assert _ends(trainable) == sorted(
        ["lora_embeddings_a", "lora_embeddings_b"] + ["bias", "lora_kernel_a", "lora_kernel_b"] * 2
    )
    frozen = wrapped.initial_weights.non_trainable
    assert {
        "layer_normalization/gamma",
        "layer_normalization/beta",
        "dense/kernel",
        "embedding/embeddings",
        "sequential/dense/kernel",
        "sequential/batch_normalization/gamma",
        "sequential/batch_normalization/moving_mean",
    } <= set(frozen)


def test_named_layers_only_with_alpha():
    model = _model()
    assert fk.models.enable_lora(model, 3, alpha=6.0, layer_names=["head"]) == ("head",)
    head = model.get_layer("head")
    assert (head.lora_rank, head.lora_alpha) == (3, 6.0)
    assert sorted(w.path for w in model.trainable_weights) == [
        "head/bias",
        "head/lora_kernel_a",
        "head/lora_kernel_b",
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"rank": 0}, "rank must be a positive int"),
        ({"rank": True}, "rank must be a positive int"),
        ({"rank": 2, "layer_names": ["norm"]}, r"\['norm'\] name no Dense.*'embed', 'head'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fk.models.enable_lora(_model(), **kwargs)


def test_an_unbuilt_model_is_refused():
    with pytest.raises(ValueError, match="needs a built model"):
        fk.models.enable_lora(keras.Sequential([keras.layers.Dense(2)]), 2)
