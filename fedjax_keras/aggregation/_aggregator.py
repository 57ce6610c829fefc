"""The aggregator interface: how client contributions become one aggregate.

An `Aggregator` is a NamedTuple of pure functions, like an optax transform:

- ``init(spec) -> state``: its persistent server state (an adaptive clip
  norm, ...), kept in ``ServerState.aggregator_state`` between rounds;
- ``client_init(spec) -> row``: its per-client persistent state (an
  error-feedback residual, ...), kept in the process's client table; ``()``
  for none;
- ``start(state, spec, capacity) -> accumulator``: the empty accumulator of a
  round;
- ``accumulate(accumulator, state, contributions) -> (accumulator, client_rows)``:
  adds one chunk of clients, inside the chunk's compiled program;
- ``finalize(accumulator, state, key) -> (aggregate, state, metrics)``: once
  per round, inside the server's compiled program.

``spec`` is a pytree of `jax.ShapeDtypeStruct` shaped like one client's
values. Running sums (``mean``, ``sum``) keep memory flat in the cohort size.
An aggregator that needs every client's values at once (a median, a trimmed
mean) sets ``stacked=True``: ``start`` then receives the round's ``capacity``
(client slots, padding included) and ``Contributions.slots`` says where each
client goes; its memory is ``capacity x size of one client's values``.

Wrappers take an ``inner`` aggregator (``clipped(1.0, mean())``) so they
compose like ``optax.chain``. Every aggregator must ignore clients whose
``keep`` is False with `jnp.where`, never by multiplying by a zero weight:
their values may be NaN.
"""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class Contributions(NamedTuple):
    """One chunk of clients' contributions; every leaf has a leading [clients] axis.

    Attributes:
      values: pytree, leaves [clients, ...]: what each client sends.
      weights: float32 [clients]: each client's weight (example count, or 1).
      keep: bool [clients]: False for padding clients and clients whose
        results are not finite; such clients must not count.
      slots: int32 [clients]: a distinct index of each client in
        ``[0, capacity)`` for the round (for stacked aggregators).
      keys: PRNG keys [clients]: each client's own randomness.
      client_states: the aggregator's per-client rows [clients, ...], or ``()``.
    """

    values: Any
    weights: jax.Array
    keep: jax.Array
    slots: jax.Array
    keys: jax.Array
    client_states: Any = ()


class Aggregator(NamedTuple):
    """Pure functions that turn client contributions into one aggregate (module docstring).

    Attributes:
      init: ``(spec) -> state``, the persistent server state.
      start: ``(state, spec, capacity) -> accumulator``.
      accumulate: ``(accumulator, state, Contributions) -> (accumulator, client_rows)``.
      finalize: ``(accumulator, state, key) -> (aggregate, state, metrics dict)``.
      client_init: ``(spec) -> row``, the per-client persistent state, ``()`` for none.
      stacked: True when ``start`` needs the round's capacity (every client kept).
    """

    init: Callable[[Any], Any]
    start: Callable[[Any, Any, int], Any]
    accumulate: Callable[[Any, Any, Contributions], tuple[Any, Any]]
    finalize: Callable[[Any, Any, jax.Array], tuple[Any, Any, dict]]
    client_init: Callable[[Any], Any] = lambda spec: ()
    stacked: bool = False


def wrapping_aggregator(
    inner: Aggregator, *, start, accumulate, metrics, client_init=None
) -> Aggregator:
    """An `Aggregator` that transforms contributions before ``inner`` sees them.

    Its accumulator has the inner one as its field ``inner``; the inner
    ``init``, ``stacked`` and (unless given) ``client_init`` are kept.

    Args:
      inner: the aggregator wrapped.
      start, accumulate: the wrapper's own (they call ``inner``'s).
      metrics: ``accumulator -> dict``, added to the inner aggregator's metrics.
      client_init: the per-client row, if the wrapper keeps one of its own.
    """

    def finalize(acc, state, key):
        value, state, inner_metrics = inner.finalize(acc.inner, state, key)
        return value, state, {**inner_metrics, **metrics(acc)}

    return Aggregator(
        init=inner.init,
        start=start,
        accumulate=accumulate,
        finalize=finalize,
        client_init=client_init or inner.client_init,
        stacked=inner.stacked,
    )


def zeros_like_spec(spec) -> Any:
    """Zeros shaped like a pytree of arrays or `jax.ShapeDtypeStruct`."""
    return jax.tree.map(lambda s: jnp.zeros(jnp.shape(s), s.dtype), spec)


def keep_mask(keep: jax.Array, leaf: jax.Array) -> jax.Array:
    """``keep`` [clients] reshaped to broadcast against ``leaf`` [clients, ...]."""
    return keep.reshape(keep.shape + (1,) * (leaf.ndim - keep.ndim))


def masked_sum(tree, keep: jax.Array, scale: jax.Array | None = None):
    """Sum over the clients axis of the kept clients, each leaf optionally times ``scale``.

    Dropped clients are removed with `jnp.where`, so their NaNs cannot leak in.
    """

    def one(leaf):
        value = leaf if scale is None else leaf * keep_mask(scale, leaf).astype(leaf.dtype)
        return jnp.sum(jnp.where(keep_mask(keep, leaf), value, jnp.zeros((), leaf.dtype)), axis=0)

    return jax.tree.map(one, tree)


def safe_divide(tree, denominator):
    """``tree / denominator`` leaf by leaf, zeros when the denominator is zero (never NaN)."""
    positive = denominator > 0
    safe = jnp.where(positive, denominator, 1.0)
    return jax.tree.map(lambda t: jnp.where(positive, t / safe.astype(t.dtype), 0.0), tree)


def _no_state(spec):
    del spec
    return ()


class SumState(NamedTuple):
    """The running sums of `mean` and `sum`.

    Attributes:
      total: pytree like one client's values: the (weighted) sum.
      weight: float32 scalar: the sum of the kept clients' weights.
    """

    total: Any
    weight: jax.Array


def _sum_aggregator(weighted: bool, divide: bool) -> Aggregator:
    def start(state, spec, capacity):
        del state, capacity
        return SumState(zeros_like_spec(spec), jnp.zeros((), jnp.float32))

    def accumulate(acc: SumState, state, c: Contributions):
        del state
        scale = c.weights if weighted else None
        total = jax.tree.map(jnp.add, acc.total, masked_sum(c.values, c.keep, scale))
        weight = acc.weight + jnp.sum(jnp.where(c.keep, c.weights, 0.0))
        return SumState(total, weight), c.client_states

    def finalize(acc: SumState, state, key):
        del key
        value = safe_divide(acc.total, acc.weight) if divide else acc.total
        return value, state, {}

    return Aggregator(_no_state, start, accumulate, finalize)


def mean() -> Aggregator:
    """The weighted mean of the kept clients' values (TFF's ``MeanFactory``).

    Weights are the algorithm's client weights (example counts for
    ``build_weighted_fed_avg``, 1 for ``build_unweighted_fed_avg``). A round
    whose weights sum to zero aggregates to zeros, never NaN.
    """
    return _sum_aggregator(weighted=True, divide=True)


def sum() -> Aggregator:  # noqa: A001 (as jnp.sum: read as aggregation.sum)
    """The plain sum of the kept clients' values (weights ignored; TFF's ``SumFactory``)."""
    return _sum_aggregator(weighted=False, divide=False)


def by_key(aggregators: Mapping[str, Aggregator]) -> Aggregator:
    """Aggregates each entry of dict-valued contributions with its own aggregator.

    Algorithms that send more than one thing use it: SCAFFOLD sends
    ``{'delta': ..., 'control': ...}`` and aggregates them with
    ``by_key({'delta': user_aggregator, 'control': sum()})``. The aggregate,
    the state and the client rows are dicts with the same keys; metrics are
    merged (a name two parts share is prefixed with its key).

    Args:
      aggregators: key -> `Aggregator`.
    """
    parts = dict(aggregators)
    if not parts or not all(isinstance(a, Aggregator) for a in parts.values()):
        raise TypeError(
            f"by_key expects a non-empty dict of Aggregators; received {aggregators!r}."
        )

    def split(fn):
        return lambda tree, *args: {k: fn(parts[k], tree[k], *args) for k in parts}

    def accumulate(acc, state, c: Contributions):
        new_acc, rows = {}, {}
        for k, agg in parts.items():
            client_states = c.client_states[k] if c.client_states != () else ()
            new_acc[k], rows[k] = agg.accumulate(
                acc[k], state[k], c._replace(values=c.values[k], client_states=client_states)
            )
        return new_acc, rows

    def finalize(acc, state, key):
        values, states, metrics = {}, {}, {}
        for index, (k, agg) in enumerate(parts.items()):
            values[k], states[k], part_metrics = agg.finalize(
                acc[k], state[k], jax.random.fold_in(key, index)
            )
            for name, value in part_metrics.items():
                metrics[f"{k}/{name}" if name in metrics else name] = value
        return values, states, metrics

    return Aggregator(
        init=split(lambda agg, spec: agg.init(spec)),
        start=lambda state, spec, capacity: {
            k: agg.start(state[k], spec[k], capacity) for k, agg in parts.items()
        },
        accumulate=accumulate,
        finalize=finalize,
        client_init=split(lambda agg, spec: agg.client_init(spec)),
        stacked=any(agg.stacked for agg in parts.values()),
    )


def check_aggregator(aggregator, argument: str = "aggregator") -> Aggregator:
    """Returns ``aggregator`` if it is an `Aggregator`, else a TypeError with the fix."""
    if isinstance(aggregator, Aggregator):
        return aggregator
    raise TypeError(
        f"{argument} must be a fedjax_keras.aggregation.Aggregator (e.g. "
        f"fedjax_keras.aggregation.mean(), or clipped(1.0, mean())); received {aggregator!r}."
    )
