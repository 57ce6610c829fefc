"""Pytree helpers shared by every layer of the package (no package imports here)."""

import jax
import jax.numpy as jnp


def tree_where(condition, new, old):
    """``jnp.where(condition, new, old)`` leaf by leaf: a masked step or a rejected
    update keeps ``old`` without multiplying (``0 * NaN`` is NaN)."""
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)
