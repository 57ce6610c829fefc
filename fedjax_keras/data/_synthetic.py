"""Synthetic federated tasks generated in memory, no download needed.

Three seeded generators, each returning a `FederatedData`:

* `emnist_like`: 28x28x1 images, 62 classes, 400 clients with lognormal sizes
  and Dirichlet label skew; each example is a smoothed class prototype plus noise,
  so a convolutional model has something to learn.
* `cifar_like`: 32x32x3 images, 10 classes, 1,000 clients of 50 examples (the
  cross-device CIFAR-10 split of pfl-research's framework comparison).
* `synthetic_leaf`: LEAF's Synthetic(alpha, beta) softmax-regression task
  (Caldas et al. 2018, arXiv:1812.01097; Li et al. 2020, arXiv:1812.06127).

With default arguments the arrays are bit-identical to those of the benchmark
script `shared/bench/make_workload.py`, so benchmarks and tests see the same
data. That is why the per-client loops stay: every client draws from one shared
random stream in a fixed order (label mix, labels, noise, ...), and drawing for
all clients at once would consume the stream in a different order and change
every number. Outputs are filled in place instead of concatenated.
"""

from __future__ import annotations

import numpy as np

from fedjax_keras.data._federated_data import FederatedData


def emnist_like(
    seed: int = 0,
    num_clients: int = 400,
    num_classes: int = 62,
    *,
    size_median: float = 200.0,
    size_sigma: float = 0.6,
    min_size: int = 20,
    max_size: int = 600,
    label_concentration: float = 0.3,
    noise: float = 0.35,
    smoothing_steps: int = 3,
) -> FederatedData:
    """An EMNIST-shaped image task with label skew and skewed client sizes.

    Client sizes are `clip(lognormal(log(size_median), size_sigma), min_size,
    max_size)` (truncated to integers); each client draws its label mix from
    `Dirichlet(label_concentration)`, and each example is its class prototype
    (a smoothed random image) plus Gaussian noise of std `noise`, clipped to [0, 1].

    Args:
      seed: seed of the single random stream.
      num_clients: number of clients C.
      num_classes: number of classes K.
      size_median: median client size before clipping.
      size_sigma: std of log client size; 0 gives equal sizes.
      min_size: smallest client size (clip).
      max_size: largest client size (clip).
      label_concentration: Dirichlet concentration of each client's label mix;
        small is very non-IID, large is near IID.
      noise: std of the Gaussian pixel noise.
      smoothing_steps: rounds of neighbour averaging of the prototypes.

    Returns:
      FederatedData with `x` [N, 28, 28, 1] float32 in [0, 1] and `y` [N] int32.

    Example:
      >>> data = emnist_like(num_clients=3)
      >>> data.num_clients
      3
    """
    _check_positive(
        num_clients=num_clients,
        num_classes=num_classes,
        size_median=size_median,
        label_concentration=label_concentration,
    )
    rng = np.random.default_rng(seed)
    protos = _prototypes(rng, num_classes, (28, 28), smoothing_steps)
    sizes = _client_sizes(rng, num_clients, size_median, size_sigma, min_size, max_size)
    x, y, offsets = _image_clients(rng, protos, sizes, label_concentration, noise, (28, 28, 1))
    return FederatedData.from_arrays(x, y, offsets)


def cifar_like(
    seed: int = 0,
    num_clients: int = 1000,
    per_client: int = 50,
    num_classes: int = 10,
    *,
    label_concentration: float = 0.5,
    noise: float = 0.35,
    smoothing_steps: int = 3,
) -> FederatedData:
    """A CIFAR-10-shaped image task: equal-size clients with label skew.

    Args:
      seed: seed of the single random stream.
      num_clients: number of clients C.
      per_client: examples per client.
      num_classes: number of classes K.
      label_concentration: Dirichlet concentration of each client's label mix.
      noise: std of the Gaussian pixel noise.
      smoothing_steps: rounds of neighbour averaging of the prototypes.

    Returns:
      FederatedData with `x` [C * per_client, 32, 32, 3] float32 in [0, 1] and
      `y` [C * per_client] int32.

    Example:
      >>> cifar_like(num_clients=2, per_client=5).num_examples
      10
    """
    _check_positive(
        num_clients=num_clients,
        per_client=per_client,
        num_classes=num_classes,
        label_concentration=label_concentration,
    )
    rng = np.random.default_rng(seed)
    protos = _prototypes(rng, num_classes, (32, 32, 3), smoothing_steps)
    sizes = np.full(num_clients, per_client, np.int64)
    x, y, offsets = _image_clients(rng, protos, sizes, label_concentration, noise, (32, 32, 3))
    return FederatedData.from_arrays(x, y, offsets)


def synthetic_leaf(
    alpha: float = 1.0,
    beta: float = 1.0,
    seed: int = 0,
    num_clients: int = 1000,
    dim: int = 60,
    num_classes: int = 10,
    *,
    size_median: float = 50.0,
    size_sigma: float = 0.6,
    min_size: int = 5,
    max_size: int = 300,
) -> FederatedData:
    """LEAF's Synthetic(alpha, beta): per-client softmax regression.

    Client k draws u_k ~ N(0, alpha) and B_k ~ N(0, beta); its model is
    W_k ~ N(u_k, 1) [dim, K], b_k ~ N(u_k, 1) [K]; its inputs are
    x ~ N(v_k, diag(j^-1.2)) with v_k ~ N(B_k, 1) [dim]; labels are
    argmax(x W_k + b_k). `alpha` controls how much client models differ, `beta`
    how much client inputs differ (Caldas et al. 2018, arXiv:1812.01097).
    Client sizes follow the lognormal rule of `emnist_like`.

    Args:
      alpha: model heterogeneity (std of u_k).
      beta: input heterogeneity (std of B_k).
      seed: seed of the single random stream.
      num_clients: number of clients C.
      dim: input dimension.
      num_classes: number of classes K.
      size_median: median client size before clipping.
      size_sigma: std of log client size.
      min_size: smallest client size (clip).
      max_size: largest client size (clip).

    Returns:
      FederatedData with `x` [N, dim] float32 and `y` [N] int32.

    Example:
      >>> synthetic_leaf(alpha=0.5, beta=0.5, num_clients=4).num_clients
      4
    """
    _check_positive(
        num_clients=num_clients, dim=dim, num_classes=num_classes, size_median=size_median
    )
    if alpha < 0 or beta < 0:
        raise ValueError(f"alpha and beta must be >= 0, got alpha={alpha!r}, beta={beta!r}.")
    rng = np.random.default_rng(seed)
    sizes = _client_sizes(rng, num_clients, size_median, size_sigma, min_size, max_size)
    offsets = _offsets(sizes)
    cov = np.diag(np.arange(1, dim + 1, dtype=np.float64) ** -1.2)
    x_out = np.empty((offsets[-1], dim), np.float32)
    y_out = np.empty((offsets[-1],), np.int32)
    for c, size in enumerate(sizes):
        u = rng.normal(0, alpha)
        b = rng.normal(0, beta)
        w = rng.normal(u, 1, (dim, num_classes))
        bias = rng.normal(u, 1, num_classes)
        v = rng.normal(b, 1, dim)
        # Kept as numpy's own sampler (not a cached Cholesky factor) so the
        # numbers match the benchmark script whatever method numpy uses inside.
        x = rng.multivariate_normal(v, cov, size)
        rows = slice(offsets[c], offsets[c + 1])
        x_out[rows] = x
        y_out[rows] = np.argmax(x @ w + bias, axis=1)
    return FederatedData.from_arrays(x_out, y_out, offsets)


def _check_positive(**values) -> None:
    for name, value in values.items():
        if value <= 0:
            raise ValueError(f"{name} must be > 0, got {value!r}.")


def _client_sizes(rng, num_clients, median, sigma, lo, hi) -> np.ndarray:
    if not 0 < lo <= hi:
        raise ValueError(
            f"Client sizes need 0 < min_size <= max_size, got min_size={lo!r}, max_size={hi!r}."
        )
    return np.clip(rng.lognormal(np.log(median), sigma, num_clients), lo, hi).astype(np.int64)


def _offsets(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _prototypes(rng, num_classes, shape, smoothing_steps) -> np.ndarray:
    """Random images smoothed by neighbour averaging, rescaled to [0, 1]: [K, *shape]."""
    protos = rng.random((num_classes, *shape)).astype(np.float32)
    # Smooth so that convolutions have local structure to find.
    for _ in range(smoothing_steps):
        protos = (protos + np.roll(protos, 1, 1) + np.roll(protos, 1, 2)) / 3.0
    return (protos - protos.min()) / (protos.max() - protos.min())


def _image_clients(rng, protos, sizes, label_concentration, noise, example_shape):
    """Draws each client's label mix, labels and noisy images, client by client.

    Returns:
      (x [N, *example_shape] float32, y [N] int32, client_offsets [C + 1] int64).
    """
    num_classes = protos.shape[0]
    concentration = np.full(num_classes, label_concentration)
    # A Python float keeps the noise product in float32 (a numpy float64 would not).
    noise = float(noise)
    offsets = _offsets(sizes)
    x_out = np.empty((offsets[-1], *example_shape), np.float32)
    y_out = np.empty((offsets[-1],), np.int32)
    for c, size in enumerate(sizes):
        p = rng.dirichlet(concentration)
        y = rng.choice(num_classes, size=size, p=p).astype(np.int32)
        x = protos[y] + noise * rng.standard_normal((size, *protos.shape[1:])).astype(np.float32)
        rows = slice(offsets[c], offsets[c + 1])
        x_out[rows] = np.clip(x, 0.0, 1.0).reshape(size, *example_shape)
        y_out[rows] = y
    return x_out, y_out, offsets
