"""Norm bounding: clip each client's update to an L2 norm, or zero it when it is larger.

Both are wrappers around an ``inner`` aggregator, so they compose like optax
transforms: ``clipped(1.0, mean())``, ``zeroed(100.0, clipped(1.0, mean()))``.
The norm of a client's update is taken over all its leaves together (the
update flattened into one vector), as TFF's ``clipping_factory`` and
``zeroing_factory`` do.

- `clipped` scales an update ``v`` to ``v * min(1, norm / ||v||)``: every
  client's contribution to the inner aggregator has norm at most ``norm``.
- `zeroed` replaces an update whose norm exceeds ``norm`` by zeros; the client
  still counts (its weight stays in a mean's denominator), as in TFF.

Round metrics: ``clip/norm`` and ``clip/clipped_fraction`` (the fraction of
the round's kept clients whose update was scaled down), ``zeroing/norm`` and
``zeroing/zeroed_fraction``.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._numbers import is_real
from fedjax_keras.aggregation._aggregator import (
    Aggregator,
    Contributions,
    check_aggregator,
    wrapping_aggregator,
)


def client_norms(values) -> jax.Array:
    """float32 [clients]: the L2 norm of each client's values over all leaves together.

    Args:
      values: pytree, leaves [clients, ...].
    """
    leaves = jax.tree.leaves(values)
    if not leaves:
        raise ValueError("client_norms needs at least one array leaf; received an empty tree.")
    squares = [
        jnp.sum(jnp.square(leaf.astype(jnp.float32)).reshape(leaf.shape[0], -1), axis=1)
        for leaf in leaves
    ]
    return jnp.sqrt(sum(squares[1:], squares[0]))


def scale_clients(values, scale: jax.Array):
    """Each client's leaves times its factor ``scale`` [clients]."""
    return jax.tree.map(
        lambda leaf: leaf * scale.reshape((-1,) + (1,) * (leaf.ndim - 1)).astype(leaf.dtype),
        values,
    )


def clip_factors(norms: jax.Array, norm) -> jax.Array:
    """float32 [clients]: ``min(1, norm / ||v||)``, 1 for a zero update (never NaN)."""
    return jnp.minimum(1.0, norm / jnp.maximum(norms, jnp.finfo(jnp.float32).tiny))


def check_norm(norm, name: str = "norm") -> float:
    """``norm`` as a float if it is a positive finite number, else a ValueError with the fix."""
    value = float(norm) if is_real(norm) else float("nan")
    if not (value > 0 and value < float("inf")):
        raise ValueError(f"{name} must be a positive finite number (e.g. 1.0); received {norm!r}.")
    return value


class BoundedAccumulator(NamedTuple):
    """The accumulator of `clipped` and `zeroed`.

    Attributes:
      inner: the inner aggregator's accumulator.
      bounded: float32 scalar, kept clients whose update exceeded the norm.
      kept: float32 scalar, kept clients.
    """

    inner: Any
    bounded: jax.Array
    kept: jax.Array


def _norm_bounding(norm: float, inner: Aggregator, zero: bool, prefix: str, what: str):
    def start(state, spec, capacity):
        zero_f = jnp.zeros((), jnp.float32)
        return BoundedAccumulator(inner.start(state, spec, capacity), zero_f, zero_f)

    def accumulate(acc: BoundedAccumulator, state, c: Contributions):
        norms = client_norms(c.values)
        exceeds = c.keep & (norms > norm)
        if zero:
            factors = jnp.where(exceeds, 0.0, 1.0)
        else:
            factors = clip_factors(norms, norm)
        # Dropped clients may hold NaN: keep them as they are (the inner
        # aggregator removes them with jnp.where) rather than scale a NaN.
        factors = jnp.where(c.keep, factors, 1.0)
        inner_acc, rows = inner.accumulate(
            acc.inner, state, c._replace(values=scale_clients(c.values, factors))
        )
        return (
            BoundedAccumulator(
                inner_acc,
                acc.bounded + jnp.sum(exceeds, dtype=jnp.float32),
                acc.kept + jnp.sum(c.keep, dtype=jnp.float32),
            ),
            rows,
        )

    def metrics(acc: BoundedAccumulator):
        return {
            f"{prefix}/norm": jnp.float32(norm),
            f"{prefix}/{what}_fraction": acc.bounded / jnp.maximum(acc.kept, 1.0),
        }

    return wrapping_aggregator(inner, start=start, accumulate=accumulate, metrics=metrics)


def clipped(norm: float, inner: Aggregator) -> Aggregator:
    """Clips each client's update to L2 norm ``norm`` (all leaves together), then ``inner``.

    Args:
      norm: the clip norm C > 0.
      inner: the aggregator that receives the clipped updates (e.g. ``mean()``).

    Returns:
      An `Aggregator` whose metrics add ``clip/norm`` and ``clip/clipped_fraction``.

    Example:
      >>> aggregator = clipped(1.0, mean())   # build_weighted_fed_avg(..., aggregator=aggregator)
    """
    return _norm_bounding(
        check_norm(norm), check_aggregator(inner, "inner"), False, "clip", "clipped"
    )


def zeroed(norm: float, inner: Aggregator) -> Aggregator:
    """Replaces by zeros each client's update whose L2 norm exceeds ``norm``, then ``inner``.

    The zeroed client still counts in ``inner`` (with its weight), as in TFF's
    ``zeroing_factory``: a large update is treated as "no change".

    Args:
      norm: the zeroing threshold > 0.
      inner: the aggregator that receives the updates.

    Returns:
      An `Aggregator` whose metrics add ``zeroing/norm`` and ``zeroing/zeroed_fraction``.
    """
    return _norm_bounding(
        check_norm(norm), check_aggregator(inner, "inner"), True, "zeroing", "zeroed"
    )
