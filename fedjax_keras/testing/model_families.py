"""Small models of the families researchers bring, built from configs with random weights.

Each `Family` builds an uncompiled, built Keras model (nothing is downloaded:
``weights=None``) and makes a batch of the shape it expects. Two builds with the
same ``seed`` have identical weights (``keras.utils.set_random_seed`` before
building), so a second build is a Keras reference next to the wrapped model;
another seed gives other weights, and other auto-generated layer names, of the
same architecture. ``Family.needs`` says in one line what a user must get right
to wrap the model (batch structure, masks, dtype policy).

The keras.applications models are compiled by XLA for a minute or more each;
the others in seconds. ``keras_hub`` (for the GPT-2 families) is imported only
when those are built.
"""

import dataclasses
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

NUM_CLASSES = 3
_IMAGE_CLASSES = 10
_TOKENS = 32  # vocabulary of the token classifiers and taggers
_TAGS = 5
_GPT2 = {"vocabulary_size": 64, "sequence_length": 8}
# The data the preprocessing layers are adapted on: fixed, not seeded, because
# Discretization's bin boundaries are configuration, not weights, and every
# instance of the family must share them (to_keras cannot carry them).
_ADAPT_SEED = 1234


def _sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@dataclasses.dataclass(frozen=True)
class Family:
    """One model family: how to build it, what batch it takes, and its loss.

    Attributes:
      name: a short id (``'gpt2_causal_lm'``).
      build: ``build(seed=0) -> keras.Model``, uncompiled and built.
      make_batch: ``make_batch(n, seed=0) -> (x, y)`` of numpy arrays with ``n``
        examples (``x`` a dict for multi-input models).
      needs: what wrapping it needs, for the docs.
      loss: ``loss() -> a Keras loss`` (sparse cross-entropy on logits by default).
      lora: whether ``build`` enables LoRA (only the LoRA factors train).
      requires: packages ``build`` imports beyond keras (``('keras_hub',)``).
    """

    name: str
    build: Callable[..., keras.Model]
    make_batch: Callable[..., tuple[Any, Any]]
    needs: str
    loss: Callable[[], Any] = _sparse_ce
    lora: bool = False
    requires: tuple[str, ...] = ()


def _seeded(seed: int) -> None:
    keras.utils.set_random_seed(seed)


def _no_dropout(model: keras.Model) -> keras.Model:
    # keras.applications build Dropout layers they take no rate for (EfficientNet's
    # drop-connect); at rate 0 one step is deterministic, so Keras' own
    # train_on_batch is its reference. The rate is in the config: clones keep it.
    for layer in model._flatten_layers():
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return model


def _images(shape, classes):
    def make_batch(n: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.0, 1.0, (n, *shape)).astype(np.float32)
        return x, rng.integers(0, classes, n).astype(np.int32)

    return make_batch


def _application(constructor, **kwargs):
    def build(seed: int = 0) -> keras.Model:
        _seeded(seed)
        model = constructor(
            weights=None,
            input_shape=(32, 32, 3),
            classes=_IMAGE_CLASSES,
            classifier_activation=None,
            **kwargs,
        )
        return _no_dropout(model)

    return build


def transformer_classifier(seed: int = 0, sequence_length: int = 8) -> keras.Model:
    """Token + position embeddings, one pre-norm MultiHeadAttention block, a pooled classifier.

    Inputs int32 [batch, sequence_length] in [0, 32); logits [batch, 3].
    """
    _seeded(seed)
    tokens = keras.Input((sequence_length,), dtype="int32")
    h = keras.layers.Embedding(_TOKENS, 16)(tokens)
    # Positions computed from the input, so the position embedding is a layer of
    # the graph (called on a constant, it would be folded into one).
    positions = keras.ops.zeros_like(tokens) + keras.ops.arange(sequence_length, dtype="int32")
    h = h + keras.layers.Embedding(sequence_length, 16)(positions)
    attended = keras.layers.MultiHeadAttention(num_heads=2, key_dim=8)(
        *(2 * [keras.layers.LayerNormalization()(h)])
    )
    h = h + attended
    mlp = keras.layers.Dense(32, activation="gelu")(keras.layers.LayerNormalization()(h))
    h = h + keras.layers.Dense(16)(mlp)
    h = keras.layers.GlobalAveragePooling1D()(h)
    return keras.Model(tokens, keras.layers.Dense(NUM_CLASSES)(h))


def _tokens(n: int, seed: int = 0, length: int = 8):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, _TOKENS, (n, length)).astype(np.int32)
    return x, rng.integers(0, NUM_CLASSES, n).astype(np.int32)


def gru_lstm_tagger(seed: int = 0, sequence_length: int = 6) -> keras.Model:
    """Embedding(mask_zero=True) -> GRU -> Bidirectional(LSTM) -> per-token tag logits.

    Inputs int32 [batch, sequence_length], 0 for padding (masked); logits
    [batch, sequence_length, 5]. Keras' mask reaches the loss: padded tokens count
    for nothing.
    """
    _seeded(seed)
    return keras.Sequential(
        [
            keras.Input((sequence_length,), dtype="int32"),
            keras.layers.Embedding(_TOKENS, 8, mask_zero=True),
            keras.layers.GRU(8, return_sequences=True),
            keras.layers.Bidirectional(keras.layers.LSTM(6, return_sequences=True)),
            keras.layers.Dense(_TAGS),
        ]
    )


def _tagged_sequences(n: int, seed: int = 0, length: int = 6):
    rng = np.random.default_rng(seed)
    x = rng.integers(1, _TOKENS, (n, length)).astype(np.int32)
    lengths = rng.integers(2, length + 1, n)
    x[np.arange(length)[None, :] >= lengths[:, None]] = 0  # trailing padding
    return x, rng.integers(0, _TAGS, (n, length)).astype(np.int32)


def gpt2_causal_lm(seed: int = 0, *, lora_rank: int | None = None) -> keras.Model:
    """A 2-layer keras_hub GPT-2 (vocabulary 64, hidden 16, 2 heads, 8 positions) as a causal LM.

    Inputs ``{'token_ids': int32 [batch, 8], 'padding_mask': bool [batch, 8]}``
    (no preprocessor: token ids in, next-token logits [batch, 8, 64] out; the
    input embedding is tied to the output projection). With ``lora_rank``, the
    backbone's ``enable_lora(rank)`` freezes every weight but the LoRA factors of
    the attention's query and value projections (and their biases).
    """
    import keras_hub

    _seeded(seed)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=_GPT2["vocabulary_size"],
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=_GPT2["sequence_length"],
        dropout=0.0,
    )
    if lora_rank is not None:
        backbone.enable_lora(rank=lora_rank)
    # keras_hub tasks compile themselves unless told not to; from_keras_model
    # takes uncompiled models only.
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None, compile=False)


def _causal_lm_batch(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    length, vocabulary = _GPT2["sequence_length"], _GPT2["vocabulary_size"]
    stream = rng.integers(1, vocabulary, (n, length + 1)).astype(np.int32)
    lengths = rng.integers(3, length + 1, n)
    padding_mask = np.arange(length)[None, :] < lengths[:, None]
    token_ids = np.where(padding_mask, stream[:, :-1], 0).astype(np.int32)
    labels = np.where(padding_mask, stream[:, 1:], 0).astype(np.int32)
    return {"token_ids": token_ids, "padding_mask": padding_mask}, labels


def group_norm_cnn(seed: int = 0) -> keras.Model:
    """Conv -> GroupNormalization(4 groups) -> Conv -> pooled classifier (no batch statistics).

    Images float32 [batch, 8, 8, 3]; logits [batch, 3].
    """
    _seeded(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(8, 3),
            keras.layers.GroupNormalization(groups=4),
            keras.layers.Activation("relu"),
            keras.layers.Conv2D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(NUM_CLASSES),
        ]
    )


def two_input(seed: int = 0) -> keras.Model:
    """An image branch and a feature branch joined: ``{'image', 'features'}`` -> logits.

    Inputs ``{'image': float32 [batch, 8, 8, 1], 'features': float32 [batch, 5]}``;
    logits [batch, 3].
    """
    _seeded(seed)
    image = keras.Input((8, 8, 1), name="image")
    features = keras.Input((5,), name="features")
    seen = keras.layers.Conv2D(4, 3, activation="relu")(image)
    seen = keras.layers.Flatten()(keras.layers.MaxPooling2D(2)(seen))
    read = keras.layers.Dense(6, activation="tanh")(features)
    joined = keras.layers.Concatenate()([seen, read])
    return keras.Model(
        {"image": image, "features": features}, keras.layers.Dense(NUM_CLASSES)(joined)
    )


def _image_and_features(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = {
        "image": rng.normal(size=(n, 8, 8, 1)).astype(np.float32),
        "features": rng.normal(size=(n, 5)).astype(np.float32),
    }
    return x, rng.integers(0, NUM_CLASSES, n).astype(np.int32)


def _raw_features(n: int, seed: int = 0):
    # Off-centre and of different scales, so that Normalization matters.
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 4)) * [1.0, 10.0, 0.1, 3.0] + [5.0, -20.0, 0.0, 2.0]).astype(
        np.float32
    )
    return x, rng.integers(0, NUM_CLASSES, n).astype(np.int32)


def preprocessing(seed: int = 0) -> keras.Model:
    """Normalization (adapted) and Discretization (quartile bins) inside the model, then Dense.

    Inputs float32 [batch, 4] of raw features; logits [batch, 3]. Normalization's
    adapted mean and variance are non-trainable weights; Discretization's four
    bins are configuration. Both come from the same fixed data whatever the
    seed (the seed sets the Dense and Embedding weights only).
    """
    adapt_on, _ = _raw_features(256, _ADAPT_SEED)
    normalize = keras.layers.Normalization()
    normalize.adapt(adapt_on)
    # Discretization.adapt needs TensorFlow (it checks for a tf.data.Dataset): its
    # bins are given, the quartiles of the same data (what adapt(num_bins=4) finds).
    quartiles = np.quantile(adapt_on, [0.25, 0.5, 0.75]).tolist()
    discretize = keras.layers.Discretization(bin_boundaries=quartiles)
    _seeded(seed)
    raw = keras.Input((4,))
    scaled = keras.layers.Dense(6, activation="relu")(normalize(raw))
    binned = keras.layers.Flatten()(keras.layers.Embedding(4, 2)(discretize(raw)))
    joined = keras.layers.Concatenate()([scaled, binned])
    return keras.Model(raw, keras.layers.Dense(NUM_CLASSES)(joined))


def mixed_bfloat16_cnn(seed: int = 0) -> keras.Model:
    """A Conv -> BatchNormalization CNN under the ``mixed_bfloat16`` dtype policy.

    Images float32 [batch, 8, 8, 3]; float32 logits [batch, 3] (the last layer
    is float32, so the loss is computed at full precision). Variables, the
    BatchNormalization statistics included, are float32; the layers compute in
    bfloat16. tests/models/test_mixed_precision.py checks its training numbers.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        _seeded(seed)
        return keras.Sequential(
            [
                keras.Input((8, 8, 3)),
                keras.layers.Conv2D(4, 3),
                keras.layers.BatchNormalization(),
                keras.layers.Activation("relu"),
                keras.layers.Flatten(),
                keras.layers.Dense(NUM_CLASSES),
                keras.layers.Activation("linear", dtype="float32"),
            ]
        )
    finally:
        keras.config.set_dtype_policy(previous)


def _applications():
    apps = keras.applications
    return {
        "mobilenet_v2": Family(
            "mobilenet_v2",
            _application(apps.MobileNetV2),
            _images((32, 32, 3), _IMAGE_CLASSES),
            "images float32 [b, 32, 32, 3]; BatchNorm statistics are non-trainable weights",
        ),
        "resnet50": Family(
            "resnet50",
            _application(apps.ResNet50),
            _images((32, 32, 3), _IMAGE_CLASSES),
            "images float32 [b, 32, 32, 3]; BatchNorm statistics are non-trainable weights",
        ),
        "efficientnet_b0": Family(
            "efficientnet_b0",
            _application(apps.EfficientNetB0),
            _images((32, 32, 3), _IMAGE_CLASSES),
            "images float32 [b, 32, 32, 3] in [0, 255] (rescaling and normalization built in); "
            "Dropout and drop-connect draw from rng in training (here set to rate 0)",
        ),
    }


FAMILIES: dict[str, Family] = {
    **_applications(),
    "transformer_classifier": Family(
        "transformer_classifier",
        transformer_classifier,
        _tokens,
        "int32 tokens [b, 8]; MultiHeadAttention's Dropout(0) needs no rng",
    ),
    "gru_lstm_tagger": Family(
        "gru_lstm_tagger",
        gru_lstm_tagger,
        _tagged_sequences,
        "int32 tokens [b, 6], 0 = padding; labels [b, 6]; Embedding(mask_zero=True)'s mask "
        "reaches the loss and metrics",
    ),
    "gpt2_causal_lm": Family(
        "gpt2_causal_lm",
        gpt2_causal_lm,
        _causal_lm_batch,
        "x = {'token_ids': int32 [b, 8], 'padding_mask': bool [b, 8]}, labels int32 [b, 8]; "
        "GPT2CausalLM(preprocessor=None, compile=False); padded label positions count in the "
        "loss unless masked by hand",
        requires=("keras_hub",),
    ),
    "gpt2_causal_lm_lora": Family(
        "gpt2_causal_lm_lora",
        lambda seed=0: gpt2_causal_lm(seed, lora_rank=4),
        _causal_lm_batch,
        "as gpt2_causal_lm, after backbone.enable_lora(rank=4): only LoRA factors and the "
        "LoRA layers' biases train",
        lora=True,
        requires=("keras_hub",),
    ),
    "group_norm_cnn": Family(
        "group_norm_cnn",
        group_norm_cnn,
        _images((8, 8, 3), NUM_CLASSES),
        "images float32 [b, 8, 8, 3]; no non-trainable weights",
    ),
    "two_input": Family(
        "two_input",
        two_input,
        _image_and_features,
        "x = {'image': [b, 8, 8, 1], 'features': [b, 5]}, keyed by the Input names",
    ),
    "preprocessing": Family(
        "preprocessing",
        preprocessing,
        _raw_features,
        "raw float32 [b, 4]; adapt() before wrapping; Normalization's mean/variance (and "
        "count) are non-trainable weights, Discretization's bins are config (its adapt() "
        "needs TensorFlow: give bin_boundaries)",
    ),
    "mixed_bfloat16_cnn": Family(
        "mixed_bfloat16_cnn",
        mixed_bfloat16_cnn,
        _images((8, 8, 3), NUM_CLASSES),
        "build under keras.config.set_dtype_policy('mixed_bfloat16'), a float32 last layer; "
        "weights stay float32",
    ),
}
"""Every family, by name; the first three are keras.applications (slow to compile)."""

APPLICATIONS = ("mobilenet_v2", "resnet50", "efficientnet_b0")
"""The keras.applications families, at 32x32 with 10 classes."""
