"""Partitioners: split centralized arrays (x, y) into simulated clients.

Every partitioner is seeded, and every example lands in exactly one client:
none is dropped or duplicated. The result stores the clients contiguously
(rows reordered client by client), so `x` may be an array [N, ...] or a dict,
list or tuple of such arrays (one pytree level per container); `y` is an array
[N] (integer class labels [N] for the label-based partitioners).

* `partition_iid`: uniform random split into near-equal clients.
* `partition_dirichlet`: label skew, each class split by Dirichlet(alpha)
  proportions (Hsu et al. 2019, arXiv:1909.06335; NIID-Bench, Li et al. 2021,
  arXiv:2102.02079).
* `partition_shards`: pathological non-IID, label-sorted shards
  (McMahan et al. 2017, arXiv:1602.05629).
* `partition_quantity_skew`: IID labels, lognormal client sizes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedjax_keras._numbers import is_integer
from fedjax_keras.data._federated_data import FederatedData

# Dirichlet draws are repeated until every client holds min_size examples
# (as in NIID-Bench); this bounds the retries before a clear error.
_MAX_DIRICHLET_ATTEMPTS = 1000


def partition_iid(x: Any, y: Any, num_clients: int, seed: int) -> FederatedData:
    """Splits examples uniformly at random into `num_clients` near-equal clients.

    Client sizes differ by at most one; every example lands in exactly one client.

    Args:
      x: inputs [N, ...], or a dict/list/tuple of arrays [N, ...].
      y: targets [N, ...].
      num_clients: number of clients C, 1 <= C <= N.
      seed: seed of the random permutation.

    Returns:
      FederatedData with C clients and N examples.

    Raises:
      ValueError: if C is not in [1, N] or x and y differ in length.

    Example:
      >>> import numpy as np
      >>> data = partition_iid(np.zeros((10, 3)), np.arange(10), num_clients=3, seed=0)
      >>> data.client_sizes.tolist()
      [4, 3, 3]
    """
    n = _check_inputs(x, y, num_clients, labels=False)
    order = np.random.default_rng(seed).permutation(n)
    sizes = np.full(num_clients, n // num_clients, np.int64)
    sizes[: n % num_clients] += 1
    return _build(x, y, order, sizes)


def partition_dirichlet(
    x: Any, y: Any, num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> FederatedData:
    """Label skew: each class is split among clients by Dirichlet(alpha) proportions.

    For every class, proportions p ~ Dirichlet(alpha * ones(C)) decide which
    share of that class each client gets; clients already holding N / C
    examples get no more (NIID-Bench's balancing, so sizes stay comparable). The
    draw is repeated until every client has at least `min_size` examples. Small
    alpha (0.1) gives clients dominated by one or two labels; large alpha (100)
    is close to IID. Every example lands in exactly one client.

    Args:
      x: inputs [N, ...], or a dict/list/tuple of arrays [N, ...].
      y: integer class labels [N].
      num_clients: number of clients C, 1 <= C <= N.
      alpha: Dirichlet concentration, > 0.
      seed: seed of all draws.
      min_size: smallest allowed client size; NIID-Bench uses 10.

    Returns:
      FederatedData with C clients and N examples.

    Raises:
      ValueError: for a bad argument, or if no draw in 1000 gives every client
        `min_size` examples (lower min_size or raise alpha).

    Example:
      >>> import numpy as np
      >>> y = np.repeat(np.arange(4), 25)
      >>> data = partition_dirichlet(y[:, None], y, num_clients=5, alpha=0.5, seed=0)
      >>> int(data.client_sizes.sum())
      100
    """
    n = _check_inputs(x, y, num_clients, labels=True)
    if not alpha > 0:
        raise ValueError(f"alpha must be > 0 (e.g. 0.1 very skewed, 100 near IID), got {alpha!r}.")
    if not (_is_int(min_size) and 0 <= min_size <= n // num_clients):
        raise ValueError(
            f"min_size must be an integer in [0, N // num_clients] = [0, {n // num_clients}] for "
            f"N={n} examples and num_clients={num_clients}, got {min_size!r}."
        )
    rng = np.random.default_rng(seed)
    labels = np.asarray(y)
    by_class = [rng.permutation(np.flatnonzero(labels == k)) for k in np.unique(labels)]
    for _ in range(_MAX_DIRICHLET_ATTEMPTS):
        clients = _dirichlet_draw(rng, by_class, num_clients, alpha, n)
        sizes = np.array([len(c) for c in clients], np.int64)
        if sizes.min() >= min_size:
            return _build(x, y, np.concatenate(clients), sizes)
    raise ValueError(
        f"No Dirichlet(alpha={alpha!r}) draw in {_MAX_DIRICHLET_ATTEMPTS} gave every one of "
        f"num_clients={num_clients} clients at least min_size={min_size} examples; "
        "lower min_size, raise alpha or use fewer clients."
    )


def partition_shards(
    x: Any, y: Any, num_clients: int, shards_per_client: int, seed: int
) -> FederatedData:
    """Pathological non-IID split: each client gets a few label-sorted shards.

    Examples are sorted by label (ties in a seeded random order), cut into
    `num_clients * shards_per_client` equal shards, and each client receives
    `shards_per_client` shards at random (McMahan et al. 2017,
    arXiv:1602.05629: 100 clients x 2 shards of 300 MNIST digits). A client
    therefore sees at most `shards_per_client` labels when every class size is a
    multiple of the shard size (a shard that straddles two classes adds one).
    Every example lands in exactly one client.

    Args:
      x: inputs [N, ...], or a dict/list/tuple of arrays [N, ...].
      y: integer class labels [N].
      num_clients: number of clients C.
      shards_per_client: shards per client S; C * S must divide N.
      seed: seed of the tie order and the shard assignment.

    Returns:
      FederatedData with C clients of N / C examples each.

    Raises:
      ValueError: for a bad argument, or if C * S does not divide N.

    Example:
      >>> import numpy as np
      >>> y = np.repeat(np.arange(10), 6)
      >>> data = partition_shards(y[:, None], y, num_clients=10, shards_per_client=2, seed=0)
      >>> data.client_sizes.tolist() == [6] * 10
      True
    """
    n = _check_inputs(x, y, num_clients, labels=True)
    if not (_is_int(shards_per_client) and shards_per_client >= 1):
        raise ValueError(f"shards_per_client must be an integer >= 1, got {shards_per_client!r}.")
    num_shards = num_clients * shards_per_client
    if n % num_shards:
        raise ValueError(
            f"num_clients * shards_per_client = {num_shards} shards must divide the "
            f"N={n} examples so that none is dropped; pass the first "
            f"{n - n % num_shards} examples, or choose num_clients and shards_per_client "
            f"whose product divides {n}."
        )
    rng = np.random.default_rng(seed)
    shuffled = rng.permutation(n)
    by_label = shuffled[np.argsort(np.asarray(y)[shuffled], kind="stable")]
    shards = by_label.reshape(num_shards, n // num_shards)
    by_client = shards[rng.permutation(num_shards)].reshape(num_clients, -1)
    # Shuffled within each client so that its rows are not sorted by label.
    order = rng.permuted(by_client, axis=1).reshape(-1)
    sizes = np.full(num_clients, n // num_clients, np.int64)
    return _build(x, y, order, sizes)


def partition_quantity_skew(
    x: Any, y: Any, num_clients: int, seed: int, sigma: float = 1.0, min_size: int = 1
) -> FederatedData:
    """IID examples, skewed client sizes proportional to lognormal(0, sigma) draws.

    Sizes are `min_size` plus a share of the remaining examples proportional to
    the draws (largest remainders round, so they sum to N exactly); examples
    are assigned uniformly at random. sigma=0 gives equal sizes; sizes spread
    more as sigma grows. Every example lands in exactly one client.

    Args:
      x: inputs [N, ...], or a dict/list/tuple of arrays [N, ...].
      y: targets [N, ...].
      num_clients: number of clients C, 1 <= C <= N.
      seed: seed of the sizes and the assignment.
      sigma: std of the log client size, >= 0.
      min_size: smallest client size, with min_size * C <= N.

    Returns:
      FederatedData with C clients and N examples.

    Raises:
      ValueError: for a bad argument.

    Example:
      >>> import numpy as np
      >>> data = partition_quantity_skew(np.zeros((100, 2)), np.zeros(100), 4, seed=0)
      >>> int(data.client_sizes.sum())
      100
    """
    n = _check_inputs(x, y, num_clients, labels=False)
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0 (0 gives equal sizes), got {sigma!r}.")
    if not (_is_int(min_size) and 0 <= min_size * num_clients <= n):
        raise ValueError(
            f"min_size must be an integer in [0, N // num_clients] = [0, {n // num_clients}] "
            f"for N={n} and num_clients={num_clients}, got {min_size!r}."
        )
    rng = np.random.default_rng(seed)
    weights = rng.lognormal(0.0, sigma, num_clients)
    sizes = min_size + _largest_remainder(weights, n - min_size * num_clients)
    return _build(x, y, rng.permutation(n), sizes)


def _dirichlet_draw(rng, by_class, num_clients, alpha, n) -> list[np.ndarray]:
    """One NIID-Bench draw: per class, Dirichlet shares, full clients excluded."""
    clients = [[] for _ in range(num_clients)]
    held = np.zeros(num_clients, np.int64)
    for indices in by_class:
        p = rng.dirichlet(np.full(num_clients, alpha))
        open_p = np.where(held < n / num_clients, p, 0.0)
        # Every client full can only happen with all examples placed; keep p then.
        p = open_p / open_p.sum() if open_p.sum() > 0 else p
        cuts = (np.cumsum(p) * len(indices)).astype(np.int64)[:-1]
        for c, part in enumerate(np.split(indices, cuts)):
            clients[c].append(part)
            held[c] += len(part)
    # Shuffled so that a client's rows are not grouped by class.
    return [rng.permutation(np.concatenate(parts)) for parts in clients]


def _largest_remainder(weights: np.ndarray, total: int) -> np.ndarray:
    """Integers proportional to weights that sum to total exactly."""
    exact = weights / weights.sum() * total
    sizes = np.floor(exact).astype(np.int64)
    short = total - int(sizes.sum())
    sizes[np.argsort(sizes - exact, kind="stable")[:short]] += 1
    return sizes


def _is_int(value) -> bool:
    return is_integer(value)


def _num_rows(tree) -> set[int]:
    if isinstance(tree, dict):
        return set().union(*(_num_rows(v) for v in tree.values()))
    if isinstance(tree, (list, tuple)):
        return set().union(*(_num_rows(v) for v in tree))
    return {len(np.asarray(tree))}


def _take(tree, rows: np.ndarray):
    """Gathers rows of every array of a dict/list/tuple pytree."""
    if isinstance(tree, dict):
        return {k: _take(v, rows) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return type(tree)(_take(v, rows) for v in tree)
    return np.asarray(tree)[rows]


def _check_inputs(x, y, num_clients, *, labels: bool) -> int:
    """Validates the common arguments and returns N."""
    y_rows = _num_rows(y)
    x_rows = _num_rows(x)
    if len(x_rows | y_rows) != 1:
        raise ValueError(
            f"x and y must share their leading dimension N, got lengths "
            f"{sorted(x_rows)} for x and {sorted(y_rows)} for y."
        )
    (n,) = y_rows
    if labels:
        y_array = np.asarray(y) if not isinstance(y, dict) else None
        if y_array is None or y_array.ndim != 1 or not np.issubdtype(y_array.dtype, np.integer):
            raise ValueError(
                "y must be integer class labels of shape [N] for this partitioner, got "
                f"{type(y).__name__} with shape {getattr(y_array, 'shape', None)} and dtype "
                f"{getattr(y_array, 'dtype', None)}; pass y.argmax(-1) for one-hot labels."
            )
    if not (_is_int(num_clients) and 1 <= num_clients <= n):
        raise ValueError(
            f"num_clients must be an integer in [1, N] = [1, {n}] (no more clients than "
            f"examples), got {num_clients!r}."
        )
    return n


def _build(x, y, order: np.ndarray, sizes: np.ndarray) -> FederatedData:
    """Reorders rows client by client; `order` lists the rows, `sizes` cuts it."""
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    return FederatedData.from_arrays(_take(x, order), _take(y, order), offsets)
