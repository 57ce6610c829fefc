"""The k-means model: negative squared distances and the nearest-centroid cost, against numpy."""

import numpy as np
import pytest

from fedjax_keras.models._centroids import CENTROIDS_PATH, centroid_model


def test_outputs_and_loss_are_squared_distances_to_the_centroids():
    rng = np.random.default_rng(0)
    centroids = rng.normal(size=(4, 2, 3)).astype(np.float32)
    model = centroid_model(centroids)
    assert list(model.initial_weights.trainable) == [CENTROIDS_PATH]
    x = rng.normal(size=(6, 2, 3)).astype(np.float32)
    expected = ((x[:, None] - centroids[None]) ** 2).reshape(6, 4, -1).sum(-1)
    np.testing.assert_allclose(
        -model.apply(model.initial_weights, x), expected, rtol=1e-5, atol=1e-5
    )
    batch = {
        "x": x,
        "y": np.zeros((6, 5), np.int32),
        "mask": np.array([1, 1, 1, 1, 0, 0], np.float32),
    }
    loss = model.loss(model.initial_weights, batch, training=False)
    assert float(loss) == pytest.approx(expected.min(1)[:4].mean(), rel=1e-5)
