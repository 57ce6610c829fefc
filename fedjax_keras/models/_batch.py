"""One representation of a batch: `Batch(x, y, mask)`, built once at the boundary."""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras import errors

_DICT_KEYS = frozenset({"x", "y", "mask"})


class Batch(NamedTuple):
    """A batch of examples.

    Attributes:
      x: the model's inputs, a pytree of arrays with leaves [batch, ...].
      y: the labels, a pytree of arrays [batch, ...], or None (prediction only).
      mask: float32 [batch], 1 for a real example and 0 for padding, or None
        when every example is real.
    """

    x: Any
    y: Any
    mask: Any


def as_batch(batch, *, require_y: bool = True) -> Batch:
    """Normalises a user batch (dict, tuple or `Batch`) into a `Batch`.

    Args:
      batch: ``{'x': ..., 'y': ...[, 'mask': ...]}`` (TFF's convention), a tuple
        ``(x, y)`` or ``(x, y, mask)``, or a `Batch`.
      require_y: whether labels are needed (training, evaluation).

    Raises:
      InvalidBatchError: for any other structure, naming what was received.
    """
    if isinstance(batch, Batch):
        x, y, mask = batch
    elif isinstance(batch, dict):
        unknown = set(batch) - _DICT_KEYS
        if unknown or "x" not in batch:
            raise errors.InvalidBatchError(
                f"A batch dict must have the key 'x' (and 'y', optionally 'mask'); received keys "
                f"{sorted(batch)!r}{' with unknown ' + repr(sorted(unknown)) if unknown else ''}. "
                "Put all model inputs under 'x' (a dict or list for several inputs)."
            )
        x, y, mask = batch["x"], batch.get("y"), batch.get("mask")
    elif isinstance(batch, tuple) and len(batch) in (2, 3):
        x, y = batch[0], batch[1]
        mask = batch[2] if len(batch) == 3 else None
    else:
        raise errors.InvalidBatchError(
            "A batch must be a dict {'x': ..., 'y': ...} or a tuple (x, y) or (x, y, mask); "
            f"received {type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
            + "."
        )
    if require_y and y is None:
        raise errors.InvalidBatchError("The batch has no labels 'y', which the loss needs.")
    if mask is not None:
        mask = jnp.asarray(mask, dtype=jnp.float32)
        if mask.ndim != 1:
            raise errors.InvalidBatchError(
                f"The batch 'mask' must have shape [batch]; received shape {tuple(mask.shape)}."
            )
    return Batch(x, y, mask)


def batch_size_of(batch: Batch) -> int:
    """The leading dimension shared by every leaf of ``batch.x``."""
    sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(batch.x)}
    if len(sizes) != 1 or None in sizes:
        raise errors.InvalidBatchError(
            "Every input array in 'x' needs the same leading batch dimension; received "
            f"leading dimensions {sorted(str(s) for s in sizes)}."
        )
    return sizes.pop()


def example_mask(batch: Batch) -> jax.Array:
    """float32 [batch]: the batch's mask, or all ones when it has none."""
    if batch.mask is not None:
        return batch.mask
    return jnp.ones((batch_size_of(batch),), jnp.float32)


def zero_padded_examples(batch: Batch) -> Batch:
    """Replaces the inputs and labels of padded examples (mask 0) with zeros.

    Masking the loss is not enough: a padded row holding NaN (or an out-of-range
    token id) gives NaN predictions, and the backward pass multiplies the loss's
    zero cotangent by them (``0 * NaN = NaN``), poisoning every gradient.
    Zeroing the rows first keeps padding invisible whatever it contains.
    """
    if batch.mask is None:
        return batch
    keep = batch.mask > 0

    def clean(leaf):
        leaf = jnp.asarray(leaf)
        if leaf.ndim == 0:
            return leaf
        row_keep = keep.reshape(keep.shape + (1,) * (leaf.ndim - 1))
        return jnp.where(row_keep, leaf, jnp.zeros((), leaf.dtype))

    return batch._replace(x=jax.tree.map(clean, batch.x), y=jax.tree.map(clean, batch.y))
