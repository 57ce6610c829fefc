"""Small, deterministic Keras models for tests and examples.

Every builder takes a ``seed`` and gives every layer a seeded initializer, so two
calls with the same arguments build models with identical weights (useful as a
Keras reference next to the wrapped model). Each returns an *uncompiled*, built
Keras model and documents the batch it expects.
"""

import keras
import numpy as np

_NUM_CLASSES = 3


def _glorot(seed: int, index: int):
    return keras.initializers.GlorotUniform(seed=seed * 1000 + index)


def _bias(seed: int, index: int):
    # Non-zero biases, so that a bias mixed up with another weight shows in tests.
    return keras.initializers.RandomUniform(-0.1, 0.1, seed=seed * 1000 + 500 + index)


def _dense(units: int, seed: int, index: int, **kwargs) -> keras.layers.Dense:
    return keras.layers.Dense(
        units,
        kernel_initializer=_glorot(seed, index),
        bias_initializer=_bias(seed, index),
        **kwargs,
    )


def mlp(
    input_dim: int = 4,
    hidden: int = 8,
    num_classes: int = _NUM_CLASSES,
    *,
    dropout: float | None = None,
    batch_norm: bool = False,
    l2: float = 0.0,
    freeze_first: bool = False,
    seed: int = 0,
) -> keras.Model:
    """A Sequential MLP: inputs float32 [batch, input_dim], logits [batch, num_classes].

    Args:
      dropout: adds a Dropout layer with this rate after the hidden layer.
      batch_norm: adds BatchNormalization after the hidden layer.
      l2: L2 kernel regularization of the hidden layer (a model loss).
      freeze_first: builds the hidden Dense layer with ``trainable=False``.
    """
    layers = [keras.Input((input_dim,))]
    hidden_layer = _dense(
        hidden,
        seed,
        0,
        activation="relu",
        kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
    )
    hidden_layer.trainable = not freeze_first
    layers.append(hidden_layer)
    if batch_norm:
        layers.append(
            keras.layers.BatchNormalization(
                beta_initializer=_bias(seed, 1), gamma_initializer=keras.initializers.Ones()
            )
        )
    if dropout is not None:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(_dense(num_classes, seed, 2))
    return keras.Sequential(layers)


def cnn(
    input_shape: tuple[int, int, int] = (6, 6, 1), num_classes: int = _NUM_CLASSES, *, seed: int = 0
) -> keras.Model:
    """A functional CNN: images float32 [batch, 6, 6, 1], logits [batch, num_classes]."""
    inputs = keras.Input(input_shape)
    h = keras.layers.Conv2D(
        4,
        3,
        activation="relu",
        kernel_initializer=_glorot(seed, 0),
        bias_initializer=_bias(seed, 0),
    )(inputs)
    h = keras.layers.MaxPooling2D(2)(h)
    h = keras.layers.Flatten()(h)
    outputs = _dense(num_classes, seed, 1)(h)
    return keras.Model(inputs, outputs)


def multi_io(*, l2: float = 0.0, seed: int = 0) -> keras.Model:
    """A functional model with two inputs and two named outputs.

    Inputs: ``{'a': float32 [batch, 4], 'b': float32 [batch, 3]}``. Outputs:
    ``{'cls': logits [batch, 3], 'reg': [batch, 1]}`` (Keras returns a dict, and
    the output names are ``'cls'`` and ``'reg'``).
    """
    a = keras.Input((4,), name="a")
    b = keras.Input((3,), name="b")
    h = keras.layers.Concatenate()([a, b])
    h = _dense(
        6, seed, 0, activation="tanh", kernel_regularizer=keras.regularizers.L2(l2) if l2 else None
    )(h)
    cls = _dense(_NUM_CLASSES, seed, 1, name="cls")(h)
    reg = _dense(1, seed, 2, name="reg")(h)
    return keras.Model({"a": a, "b": b}, {"cls": cls, "reg": reg})


class SubclassedMLP(keras.Model):
    """A subclassed Dense -> BatchNormalization -> Dropout -> Dense model.

    Its ``call`` takes no ``training`` argument: Keras passes the training flag
    down to BatchNormalization and Dropout through the call context. (Keras'
    own ``fit`` runs such a model in inference mode; `SubclassedMLPWithTraining`
    is the same model with the argument spelled out.)
    """

    def __init__(
        self,
        hidden: int = 8,
        num_classes: int = _NUM_CLASSES,
        dropout: float = 0.0,
        seed: int = 0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.hidden, self.num_classes, self.dropout, self.seed = hidden, num_classes, dropout, seed
        self.dense_in = _dense(hidden, seed, 0, activation="relu")
        self.norm = keras.layers.BatchNormalization(beta_initializer=_bias(seed, 2))
        self.drop = keras.layers.Dropout(dropout)
        self.dense_out = _dense(num_classes, seed, 1)

    def call(self, x):
        return self.dense_out(self.drop(self.norm(self.dense_in(x))))

    def get_config(self):
        return {
            "hidden": self.hidden,
            "num_classes": self.num_classes,
            "dropout": self.dropout,
            "seed": self.seed,
            "name": self.name,
        }


class SubclassedMLPWithTraining(SubclassedMLP):
    """`SubclassedMLP` whose ``call`` takes ``training`` and passes it on explicitly."""

    def call(self, x, training=None):
        h = self.norm(self.dense_in(x), training=training)
        return self.dense_out(self.drop(h, training=training))


def subclassed(
    input_dim: int = 4, *, dropout: float = 0.0, training_arg: bool = False, seed: int = 0
) -> keras.Model:
    """A built `SubclassedMLP`: inputs float32 [batch, input_dim], logits [batch, 3].

    Args:
      training_arg: build `SubclassedMLPWithTraining` instead.
    """
    cls = SubclassedMLPWithTraining if training_arg else SubclassedMLP
    model = cls(dropout=dropout, seed=seed)
    # Calling builds every sub-layer; `model.build(shape)` would not (see from_keras_model).
    model(np.zeros((1, input_dim), np.float32))
    return model


def embedding_lstm(
    vocab_size: int = 10, sequence_length: int = 5, num_classes: int = 2, *, seed: int = 0
) -> keras.Model:
    """Embedding + LSTM classifier: int32 tokens [batch, sequence_length], logits [batch, 2]."""
    return keras.Sequential(
        [
            keras.Input((sequence_length,), dtype="int32"),
            keras.layers.Embedding(
                vocab_size, 4, embeddings_initializer=keras.initializers.RandomUniform(seed=seed)
            ),
            keras.layers.LSTM(
                6,
                kernel_initializer=_glorot(seed, 0),
                recurrent_initializer=keras.initializers.Orthogonal(seed=seed),
                bias_initializer=_bias(seed, 0),
            ),
            _dense(num_classes, seed, 1),
        ]
    )


def nested(input_dim: int = 4, *, seed: int = 0) -> keras.Model:
    """A Sequential holding a functional sub-model with BatchNormalization.

    Inputs float32 [batch, input_dim], logits [batch, 3]; its variables sit at
    two levels, so it exercises path-based weight matching.
    """
    inner_in = keras.Input((input_dim,))
    h = _dense(5, seed, 0, activation="relu")(inner_in)
    h = keras.layers.BatchNormalization(beta_initializer=_bias(seed, 3))(h)
    inner = keras.Model(inner_in, h, name="inner")
    return keras.Sequential([keras.Input((input_dim,)), inner, _dense(_NUM_CLASSES, seed, 1)])
