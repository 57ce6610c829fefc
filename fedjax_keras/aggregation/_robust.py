"""Byzantine-robust aggregation: coordinate-wise median and trimmed mean, (multi-)Krum.

Yin et al., "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018, arXiv:1803.01498 (median, trimmed mean);
Blanchard et al., "Machine Learning with Adversaries: Byzantine Tolerant
Gradient Descent", NeurIPS 2017 (Krum, multi-Krum).

All three need every client's update at once, so they are ``stacked=True``
aggregators: the engine gives ``start`` the round's ``capacity`` (client
slots, padding included) and the accumulator keeps one row per slot. Memory
is ``capacity x size of one update`` (float32), on every device: 1,000
clients of a 1M-parameter model hold 4 GB. A running-sum aggregator (``mean``,
``dp_aggregator``) keeps memory flat in the cohort size instead. Because the
capacity follows the cohort, a new number of chunks compiles the round's
start and finish programs once more (cohorts of a fixed size compile once).

Every client counts once: client weights (example counts) are ignored, as
in the papers; the statistics run over the round's kept clients only
(padding and non-finite clients are excluded with `jnp.where`). A round
without kept clients aggregates to zeros.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._numbers import is_integer, is_real
from fedjax_keras.aggregation._aggregator import Aggregator, Contributions


class StackedRows(NamedTuple):
    """The accumulator of stacked aggregators: one row per client slot.

    Attributes:
      values: pytree like one update, leaves [capacity, ...].
      kept: bool [capacity], True where a kept client wrote its row.
    """

    values: Any
    kept: jax.Array


def start_rows(state, spec, capacity: int) -> StackedRows:
    """Empty rows for ``capacity`` clients (the ``start`` of a stacked aggregator)."""
    del state
    values = jax.tree.map(lambda s: jnp.zeros((capacity,) + tuple(s.shape), s.dtype), spec)
    return StackedRows(values, jnp.zeros((capacity,), bool))


def write_rows(acc: StackedRows, state, c: Contributions):
    """Stores the chunk's kept clients at their slots (the ``accumulate`` of a stacked one)."""
    del state
    # Padding clients carry an out-of-range slot: mode="drop" discards them.
    # Dropped clients may be NaN: their rows are zeroed and marked not kept.
    values = jax.tree.map(
        lambda rows, v: rows.at[c.slots].set(
            jnp.where(c.keep.reshape((-1,) + (1,) * (v.ndim - 1)), v, 0), mode="drop"
        ),
        acc.values,
        c.values,
    )
    return StackedRows(values, acc.kept.at[c.slots].set(c.keep, mode="drop")), c.client_states


def _stacked(finalize) -> Aggregator:
    return Aggregator(
        init=lambda spec: (),
        start=start_rows,
        accumulate=write_rows,
        finalize=finalize,
        stacked=True,
    )


def _sorted_kept(rows: jax.Array, kept: jax.Array) -> jax.Array:
    """Each coordinate's values sorted along the clients axis, non-kept clients last."""
    mask = kept.reshape((-1,) + (1,) * (rows.ndim - 1))
    return jnp.sort(jnp.where(mask, rows, jnp.inf), axis=0)


def _take_rank(ordered: jax.Array, rank: jax.Array) -> jax.Array:
    return jax.lax.dynamic_index_in_dim(ordered, rank, axis=0, keepdims=False)


def median() -> Aggregator:
    """The coordinate-wise median of the kept clients' updates (unweighted).

    With an even number k of kept clients, the mean of the two middle values
    (as `numpy.median`). Robust while fewer than half the clients are Byzantine.

    Returns:
      A stacked `Aggregator` (memory: cohort x update size; see the module docstring).
    """

    def finalize(acc: StackedRows, state, key):
        del key
        k = jnp.sum(acc.kept, dtype=jnp.int32)
        low, high = jnp.maximum((k - 1) // 2, 0), jnp.maximum(k // 2, 0)

        def one(rows):
            ordered = _sorted_kept(rows, acc.kept)
            middle = 0.5 * (_take_rank(ordered, low) + _take_rank(ordered, high))
            return jnp.where(k > 0, middle, 0.0).astype(rows.dtype)

        return jax.tree.map(one, acc.values), state, {}

    return _stacked(finalize)


def trimmed_mean(beta: float) -> Aggregator:
    """The coordinate-wise trimmed mean: per coordinate, drop the ``floor(beta k)`` largest
    and smallest of the k kept values and average the rest (unweighted).

    The same cut as `scipy.stats.trim_mean(values, beta)`. Robust while the
    fraction of Byzantine clients is below ``beta``.

    Args:
      beta: the fraction trimmed at each end, in [0, 0.5).

    Returns:
      A stacked `Aggregator`; its metric ``trimmed_per_side`` is ``floor(beta k)``.
    """
    if not is_real(beta) or not 0 <= beta < 0.5:
        raise ValueError(
            f"beta must be a fraction in [0, 0.5) trimmed at each end (0.1 drops the top and "
            f"bottom 10% of every coordinate); received {beta!r}."
        )
    beta = float(beta)

    def finalize(acc: StackedRows, state, key):
        del key
        k = jnp.sum(acc.kept, dtype=jnp.int32)
        # A hair added so that float32 rounding of beta * k (0.1 * 30 may be
        # 2.9999998) does not floor one below scipy's int(beta * k) in float64.
        cut = jnp.floor(beta * k.astype(jnp.float32) + 1e-6).astype(jnp.int32)
        count = jnp.maximum(k - 2 * cut, 1)

        def one(rows):
            ordered = _sorted_kept(rows, acc.kept)
            rank = jnp.arange(rows.shape[0]).reshape((-1,) + (1,) * (rows.ndim - 1))
            inside = (rank >= cut) & (rank < k - cut)
            total = jnp.sum(jnp.where(inside, ordered, 0.0), axis=0)
            return (total / count.astype(total.dtype)).astype(rows.dtype)

        return jax.tree.map(one, acc.values), state, {"trimmed_per_side": cut}

    return _stacked(finalize)


def krum_scores(flat: jax.Array, kept: jax.Array, num_byzantine: int) -> jax.Array:
    """Krum's score of every client: the sum of squared distances to its ``k - f - 2``
    nearest kept neighbours (at least one); +inf for clients not kept.

    Args:
      flat: float32 [capacity, parameters], each client's update flattened.
      kept: bool [capacity].
      num_byzantine: f.

    Returns:
      float32 [capacity].
    """
    squares = jnp.sum(flat * flat, axis=1)
    distances = squares[:, None] + squares[None, :] - 2.0 * flat @ flat.T
    distances = jnp.maximum(distances, 0.0)
    capacity = flat.shape[0]
    valid = kept[:, None] & kept[None, :] & ~jnp.eye(capacity, dtype=bool)
    ordered = jnp.sort(jnp.where(valid, distances, jnp.inf), axis=1)
    k = jnp.sum(kept, dtype=jnp.int32)
    neighbours = jnp.maximum(k - num_byzantine - 2, 1)
    near = jnp.arange(capacity)[None, :] < neighbours
    scores = jnp.sum(jnp.where(near, ordered, 0.0), axis=1)
    return jnp.where(kept, scores, jnp.inf)


def krum(num_byzantine: int, num_selected: int = 1) -> Aggregator:
    """Krum (``num_selected=1``) or multi-Krum: the mean of the ``num_selected`` kept
    updates with the lowest Krum scores (unweighted).

    A client's score is the sum of squared L2 distances (all leaves together)
    to its ``k - num_byzantine - 2`` nearest kept neighbours; Blanchard et al.
    prove robustness for ``k > 2 num_byzantine + 2`` kept clients. With fewer,
    at least one neighbour is used and the guarantee is lost. Cost: a
    ``capacity x capacity`` distance matrix on top of the stacked rows.

    Args:
      num_byzantine: f >= 0, the Byzantine clients to tolerate.
      num_selected: m >= 1, updates averaged (more than the kept clients: all of them).

    Returns:
      A stacked `Aggregator`; its metric ``krum/selected`` is the number averaged.
    """
    checks = (("num_byzantine", num_byzantine, 0), ("num_selected", num_selected, 1))
    for name, value, low in checks:
        if not is_integer(value) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; received {value!r}.")
    num_byzantine, num_selected = int(num_byzantine), int(num_selected)

    def finalize(acc: StackedRows, state, key):
        del key
        leaves, treedef = jax.tree.flatten(acc.values)
        capacity = acc.kept.shape[0]
        flat = jnp.concatenate(
            [leaf.reshape(capacity, -1).astype(jnp.float32) for leaf in leaves], axis=1
        )
        scores = krum_scores(flat, acc.kept, num_byzantine)
        k = jnp.sum(acc.kept, dtype=jnp.int32)
        chosen_count = jnp.minimum(num_selected, k)
        order = jnp.argsort(scores)
        rank = jnp.zeros((capacity,), jnp.int32).at[order].set(jnp.arange(capacity))
        chosen = acc.kept & (rank < chosen_count)
        weights = jnp.where(chosen, 1.0, 0.0) / jnp.maximum(chosen_count, 1)
        values = [
            jnp.tensordot(weights.astype(leaf.dtype), leaf, axes=1).astype(leaf.dtype)
            for leaf in leaves
        ]
        return jax.tree.unflatten(treedef, values), state, {"krum/selected": chosen_count}

    return _stacked(finalize)
