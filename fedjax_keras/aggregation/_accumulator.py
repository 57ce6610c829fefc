"""Summing client results chunk by chunk, on device, with non-finite clients dropped.

A cohort larger than the chunk size is processed chunk after chunk; only these
running sums live between chunks, so memory is set by the chunk size, not the
cohort. A client whose update is not finite (NaN or inf anywhere) is removed
with `jnp.where` (never multiplied by a zero weight: ``0 * NaN`` is NaN) and
counted in ``num_dropped``.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class ClientOutput(NamedTuple):
    """What one client contributes to the round (leaves unbatched, or [clients, ...]).

    Attributes:
      update: pytree (usually the model delta, client minus server), summed
        with ``weight``.
      weight: float32 scalar, the client's aggregation weight.
      metrics: the client's unfinalized metric state.
      loss_sum: float32, sum of ``loss * num_examples`` over its batches.
      num_examples: int32, examples the client trained on.
      weighted_extras: pytree summed with ``weight`` as well (e.g. averaged
        non-trainable weights); ``()`` (the default) for none.
      summed_extras: pytree summed with weight 1 (e.g. SCAFFOLD's control
        variate deltas); ``()`` for none.
      client_state: the client's new persistent state; ``()`` for none.
    """

    update: Any
    weight: jax.Array
    metrics: Any
    loss_sum: jax.Array
    num_examples: jax.Array
    weighted_extras: Any = ()
    summed_extras: Any = ()
    client_state: Any = ()


class Accumulator(NamedTuple):
    """Running sums over the clients of a round.

    Attributes:
      update_sum: pytree, sum of ``weight * update``.
      weight_sum: float32, sum of weights of kept clients.
      weighted_extras_sum: pytree, sum of ``weight * weighted_extras``.
      summed_extras_sum: pytree, sum of ``summed_extras``.
      metrics: merged unfinalized metric state of kept clients.
      loss_sum: float32.
      num_examples: int32.
      num_clients: int32, clients kept.
      num_dropped: int32, clients dropped for non-finite results.
    """

    update_sum: Any
    weight_sum: jax.Array
    weighted_extras_sum: Any
    summed_extras_sum: Any
    metrics: Any
    loss_sum: jax.Array
    num_examples: jax.Array
    num_clients: jax.Array
    num_dropped: jax.Array


def _zeros_like(tree):
    return jax.tree.map(lambda a: jnp.zeros(jnp.shape(a), jnp.result_type(a)), tree)


def init_accumulator(example: ClientOutput) -> Accumulator:
    """Zero sums shaped like one (unbatched) client's output."""
    float_zero = jnp.zeros((), jnp.float32)
    int_zero = jnp.zeros((), jnp.int32)
    return Accumulator(
        _zeros_like(example.update),
        float_zero,
        _zeros_like(example.weighted_extras),
        _zeros_like(example.summed_extras),
        _zeros_like(example.metrics),
        float_zero,
        int_zero,
        int_zero,
        int_zero,
    )


def _all_finite(tree, num_clients: int) -> jax.Array:
    finite = jnp.ones((num_clients,), bool)
    for leaf in jax.tree.leaves(tree):
        if jnp.issubdtype(leaf.dtype, jnp.inexact):
            finite &= jnp.all(jnp.isfinite(leaf.reshape(num_clients, -1)), axis=1)
    return finite


def _masked_sum(tree, keep, scale=None):
    def one(leaf):
        factor = keep.reshape((-1,) + (1,) * (leaf.ndim - 1))
        value = leaf if scale is None else leaf * scale.reshape(factor.shape).astype(leaf.dtype)
        return jnp.sum(jnp.where(factor, value, jnp.zeros((), leaf.dtype)), axis=0)

    return jax.tree.map(one, tree)


def accumulate(
    acc: Accumulator,
    outputs: ClientOutput,
    valid: jax.Array,
    merge_metrics: Callable[[Any, Any], Any],
) -> tuple[Accumulator, jax.Array]:
    """Adds a chunk of clients' outputs (leaves [clients, ...]) to the sums.

    Args:
      acc: the running sums.
      outputs: the chunk's `ClientOutput`, batched over clients.
      valid: bool [clients], False for padding (dummy) clients.
      merge_metrics: the model's metric merge (a sum).

    Returns:
      ``(new_acc, kept)`` where ``kept`` is bool [clients]: valid and finite.
    """
    num_clients = valid.shape[0]
    finite = _all_finite(
        (outputs.update, outputs.weighted_extras, outputs.summed_extras, outputs.loss_sum),
        num_clients,
    )
    keep = valid & finite
    weight = jnp.where(keep, outputs.weight, 0.0)
    chunk_metrics = _masked_sum(outputs.metrics, keep)
    new_acc = Accumulator(
        jax.tree.map(jnp.add, acc.update_sum, _masked_sum(outputs.update, keep, weight)),
        acc.weight_sum + jnp.sum(weight),
        jax.tree.map(
            jnp.add, acc.weighted_extras_sum, _masked_sum(outputs.weighted_extras, keep, weight)
        ),
        jax.tree.map(jnp.add, acc.summed_extras_sum, _masked_sum(outputs.summed_extras, keep)),
        merge_metrics(acc.metrics, chunk_metrics),
        acc.loss_sum + jnp.sum(jnp.where(keep, outputs.loss_sum, 0.0)),
        acc.num_examples + jnp.sum(jnp.where(keep, outputs.num_examples, 0)).astype(jnp.int32),
        acc.num_clients + jnp.sum(keep).astype(jnp.int32),
        acc.num_dropped + jnp.sum(valid & ~finite).astype(jnp.int32),
    )
    return new_acc, keep


def weighted_mean(total, weight_sum):
    """``total / weight_sum`` leaf by leaf, zeros when the weight sum is zero (never NaN)."""
    safe = jnp.where(weight_sum > 0, weight_sum, 1.0)
    return jax.tree.map(lambda t: jnp.where(weight_sum > 0, t / safe.astype(t.dtype), 0.0), total)
