"""A Keras model whose weights are k centroids: federated k-means runs on the engine.

The engine trains `Model`s, so k-means gets one: its only weight is
``centroids`` [k, *data_shape], its output the negative squared distance of
each example to each centroid (logits [batch, k]: the nearest centroid has the
largest), and its loss the squared distance to the nearest centroid (the
k-means cost; the labels are ignored).
"""

import jax.numpy as jnp
import keras
import numpy as np

from fedjax_keras.models._from_keras import from_keras_model
from fedjax_keras.models._model import Model

CENTROIDS_PATH = "centroids/centroids"


class Centroids(keras.layers.Layer):
    """``-||x - c_j||^2`` for each of k centroids ``c_j`` (inputs flattened)."""

    def __init__(self, initial: np.ndarray, **kwargs):
        super().__init__(**kwargs)
        self.initial = np.asarray(initial, np.float32)

    def build(self, input_shape):
        self.centroids = self.add_weight(
            shape=self.initial.shape,
            initializer=keras.initializers.Constant(self.initial),
            name="centroids",
        )

    def call(self, x):
        flat = keras.ops.reshape(keras.ops.cast(x, "float32"), (keras.ops.shape(x)[0], -1))
        c = keras.ops.reshape(self.centroids, (self.initial.shape[0], -1))
        sq = (
            keras.ops.sum(flat**2, axis=1, keepdims=True)
            - 2.0 * keras.ops.matmul(flat, keras.ops.transpose(c))
            + keras.ops.sum(c**2, axis=1)[None, :]
        )
        return -keras.ops.maximum(sq, 0.0)


class NearestCentroidCost(keras.losses.Loss):
    """The squared distance of each example to its nearest centroid (labels ignored)."""

    def call(self, y_true, y_pred):
        del y_true
        return -jnp.max(y_pred, axis=-1)


def centroid_model(initial_centroids: np.ndarray) -> Model:
    """The wrapped k-means model starting at ``initial_centroids`` float [k, *data_shape].

    Batches carry labels of any shape (the loss ignores them); the dummy batch's
    are int32 [batch].
    """
    initial = np.asarray(initial_centroids, np.float32)
    data_shape = initial.shape[1:]
    net = keras.Sequential([keras.Input(data_shape), Centroids(initial)])
    dummy = {"x": np.zeros((1,) + data_shape, np.float32), "y": np.zeros((1,), np.int32)}
    return from_keras_model(net, dummy, loss=NearestCentroidCost())
