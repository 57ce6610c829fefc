"""Seeded draws of a population's clients and examples: cohorts and train/test splits.

Pure functions of sizes and seeds returning positions (or rows), so that
`FederatedData.sample_clients`, `sample_clients_poisson` and
`train_test_split` stay single vectorised gathers. Each draw is exactly a
documented numpy call, so that benchmark protocols can reproduce cohorts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedjax_keras._numbers import is_real

from ._client_arrays import is_int

# A floor a hair below an integer is treated as that integer: 0.29 * 100 is
# 28.999999999999996 in floating point, but users mean 29.
_FLOOR_TOLERANCE = 1e-9


def sample_positions(
    population: int, num_clients: int, seed: Any, replace: bool | None = None
) -> np.ndarray:
    """int64 [num_clients] positions in [0, population): ``default_rng(seed).choice(...)``.

    See `FederatedData.sample_client_positions`.

    Raises:
      ValueError: if num_clients < 0, population == 0 < num_clients, or
        num_clients > population with replace=False.
    """
    if not is_int(num_clients) or num_clients < 0:
        raise ValueError(f"num_clients must be a non-negative integer, got {num_clients!r}.")
    if replace is None:
        replace = num_clients > population
    if num_clients > population and (not replace or population == 0):
        raise ValueError(
            f"num_clients={num_clients} exceeds the population of {population} clients "
            f"with replace={replace}; pass replace=True (or None) or a smaller num_clients."
        )
    rng = np.random.default_rng(seed)
    return rng.choice(population, num_clients, replace=bool(replace)).astype(np.int64)


def poisson_positions(population: int, probability: float, seed: Any) -> np.ndarray:
    """int64 [K] increasing positions: each of ``population`` clients joins with ``probability``.

    See `FederatedData.sample_client_positions_poisson`.

    Raises:
      ValueError: if probability is not a number in [0, 1].
    """
    if not is_real(probability) or not 0 <= probability <= 1:
        raise ValueError(
            f"probability must be a number in [0, 1] (each client's chance to join the "
            f"round); received {probability!r}."
        )
    draws = np.random.default_rng(seed).random(population)
    return np.flatnonzero(draws < probability).astype(np.int64)


def split_rows(sizes: np.ndarray, test_fraction: float, seed: Any):
    """The rows of a train/test split of every client's examples (clients stored contiguously).

    Client c puts ``floor(test_fraction * n_c)`` randomly chosen examples in
    test, keeping each client's examples in their original relative order.

    Args:
      sizes: int [clients], examples per client.
      test_fraction: in (0, 1).
      seed: anything `numpy.random.default_rng` accepts.

    Returns:
      ``((train rows, train sizes), (test rows, test sizes))``: rows int64 [n]
      into the examples, sizes int64 [clients].

    Raises:
      ValueError: if test_fraction is not in (0, 1).
    """
    if not (is_real(test_fraction) and 0 < test_fraction < 1):
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}.")
    num_examples = int(np.sum(sizes))
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    n_test = np.floor(sizes * float(test_fraction) + _FLOOR_TOLERANCE).astype(np.int64)
    # Per-client random ranks: sort by (client, uniform) with one argsort of
    # client + u/2 (u/2 < 0.5 so no key rounds up into the next client).
    client_of_row = np.repeat(np.arange(len(sizes), dtype=np.float64), sizes)
    keys = client_of_row + 0.5 * np.random.default_rng(seed).random(num_examples)
    perm = np.argsort(keys)
    rank = np.empty(num_examples, np.int64)
    rank[perm] = np.arange(num_examples) - np.repeat(offsets[:-1], sizes)
    is_test = rank < np.repeat(n_test, sizes)
    return (
        (np.flatnonzero(~is_test), sizes - n_test),
        (np.flatnonzero(is_test), n_test),
    )
