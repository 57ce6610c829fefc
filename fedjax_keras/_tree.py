"""Pytree helpers shared by every layer of the package (no package imports here)."""

import jax
import jax.numpy as jnp


def tree_where(condition, new, old):
    """``jnp.where(condition, new, old)`` leaf by leaf: a masked step or a rejected
    update keeps ``old`` without multiplying (``0 * NaN`` is NaN)."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def all_true(flags: jax.Array, axis: int = -1) -> jax.Array:
    """``jnp.all(flags, axis)``, written so that XLA computes it once.

    ``flags`` is typically one flag per leaf of a large pytree (bool
    [..., leaves]) and the result a condition every leaf then uses (a
    `tree_where`, a masked sum). XLA's simplifier turns ``jnp.all`` over
    stacked flags into a chain of one ``and`` per leaf, and its fusion copies
    that cheap chain into every consumer: with one consumer per leaf the
    program grows with leaves squared (302 weight tensors: over a minute of
    XLA:CPU compilation, benchmarks/NOTES.md). Counting the False flags is
    one int32 reduction, which XLA keeps as one computation.

    Args:
      flags: bool [..., n].
      axis: the axis reduced.

    Returns:
      bool [...]: True where every flag along ``axis`` is True.
    """
    return jnp.sum(~flags, axis=axis, dtype=jnp.int32) == 0
