"""Federated k-means against TFF's weighted centroid update written in numpy."""

import numpy as np
import pytest

from fedjax_keras.algorithms import build_fed_kmeans
from fedjax_keras.data import FederatedData

CENTERS = np.array([[3.0, 0.0], [-3.0, 1.0], [0.0, -4.0]])


def _blobs(sizes, seed, spread=0.6):
    """Clients drawing 2-D points around CENTERS (each client favours one centre)."""
    rng = np.random.default_rng(seed)
    clients = {}
    for c, n in enumerate(sizes):
        favourite = rng.choice(3, size=n, p=np.roll([0.7, 0.2, 0.1], c))
        x = CENTERS[favourite] + spread * rng.normal(size=(n, 2))
        clients[c] = {"x": x.astype(np.float32), "y": favourite.astype(np.int32)}
    return FederatedData.from_client_dict(clients)


def _hand_round(points, centroids, weights):
    distances = ((points[:, None, :] - centroids[None]) ** 2).sum(-1)
    nearest = distances.argmin(1)
    counts = np.bincount(nearest, minlength=len(centroids)).astype(np.float64)
    sums = np.stack([points[nearest == j].sum(0) for j in range(len(centroids))])
    moved = (weights[:, None] * centroids + sums) / (weights + counts)[:, None]
    return moved, weights + counts, distances.min(1).mean(), counts


def test_two_rounds_equal_the_weighted_centroid_update_by_hand():
    data = _blobs([7, 0, 12, 5], seed=0)
    initial = np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, -1.0]], np.float32)
    process = build_fed_kmeans(3, (2,), initial_centroids=initial, batch_size=4, chunk_size=2)
    state = process.initialize()
    centroids, weights = initial.astype(np.float64), np.ones(3)
    points = np.concatenate([c["x"] for _, c in data]).astype(np.float64)
    for _ in range(2):
        out = process.next(state, data)
        state = out.state
        centroids, weights, cost, counts = _hand_round(points, centroids, weights)
        np.testing.assert_allclose(
            state.model.trainable["centroids/centroids"], centroids, rtol=1e-5, atol=1e-5
        )
        np.testing.assert_allclose(state.algorithm_state, weights)
        assert out.metrics["loss"] == pytest.approx(cost, rel=1e-4)
        assert out.metrics["cluster_counts"].tolist() == counts.astype(int).tolist()
        assert out.metrics["num_examples"] == len(points)


def test_default_centroids_are_seeded_normal_draws_and_shapes_are_checked():
    a = build_fed_kmeans(4, (2, 3), random_seed=1).initialize()
    b = build_fed_kmeans(4, (2, 3), random_seed=1).initialize()
    centroids = np.asarray(a.model.trainable["centroids/centroids"])
    assert centroids.shape == (4, 2, 3)
    np.testing.assert_array_equal(centroids, b.model.trainable["centroids/centroids"])
    with pytest.raises(ValueError, match=r"shape \(num_clusters, \*data_shape\) = \(4, 2\)"):
        build_fed_kmeans(4, (2,), initial_centroids=np.zeros((3, 2)))


def test_finds_the_three_blobs_in_ten_rounds():
    data = _blobs([30] * 12, seed=1)
    start = np.stack([data.client(c)["x"][0] for c in (0, 1, 2)])
    process = build_fed_kmeans(3, (2,), initial_centroids=start, batch_size=10)
    state = process.initialize()
    costs = []
    for r in range(10):
        out = process.next(state, data.sample_clients(6, seed=r))
        state = out.state
        costs.append(out.metrics["loss"])
    assert costs[-1] < 0.5 * costs[0]
    found = np.asarray(state.model.trainable["centroids/centroids"])
    nearest = np.sqrt(((CENTERS[:, None] - found[None]) ** 2).sum(-1)).min(1)
    # Centroids are running means of every point they absorbed, early mistakes included.
    assert np.all(nearest < 0.8), found
