"""Compressed uploads: stochastic quantization and top-k sparsification with error feedback.

Both are wrappers: each client's update is compressed and decompressed as
the server would see it, then handed to ``inner`` (``quantized(8, mean())``).
The simulation computes what the server receives; it does not pack bits.

- `quantized`: uniform stochastic quantization to ``bits`` bits per
  coordinate between each leaf's min and max (Suresh et al., "Distributed
  Mean Estimation with Limited Communication", ICML 2017, arXiv:1611.00429).
  Rounding up or down at random with the right odds makes it unbiased:
  ``E[Q(x)] = x``. With ``rotation=True`` each leaf is first rotated by a
  randomized Hadamard transform ``H D`` (D random signs, H the normalised
  Walsh-Hadamard matrix, the leaf zero-padded to a power of two), which
  spreads its energy over the coordinates and shrinks the error; the server
  undoes it (``D H``). The randomness comes from the clients' own keys
  (`Contributions.keys`), so a run repeats bit for bit.
- `top_k`: each client keeps the ``k`` largest-magnitude coordinates of its
  update (all leaves together) and sends them with their indices. With
  ``error_feedback=True`` (Stich et al., "Sparsified SGD with Memory",
  NeurIPS 2018, arXiv:1809.07599) the part not sent is the client's
  residual, added to its next update: ``u = update + residual``, send
  ``top_k(u)``, keep ``u - top_k(u)``. The residual is the aggregator's
  per-client state (``client_init``), a row of the process's client table,
  so cohorts must come from one population (``data.sample_clients``).

Round metrics: ``<name>/bits_per_client``, the bits one client uploads (32
per float sent, ``bits`` per quantized coordinate plus a 32-bit min and max
per leaf, ``ceil(log2(size))`` per top-k index) and
``<name>/ratio_to_float32``, that over the 32 bits per coordinate of the
uncompressed update (``name`` is ``quantized`` or ``top_k``).
"""

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._numbers import is_integer
from fedjax_keras.aggregation._aggregator import (
    Aggregator,
    Contributions,
    check_aggregator,
    wrapping_aggregator,
)

_ROTATION_STREAM, _ROUNDING_STREAM = 0x726F74, 0x726E64


class CompressedAccumulator(NamedTuple):
    """The accumulator of `quantized` and `top_k`.

    Attributes:
      inner: the inner aggregator's accumulator.
      bits: float32 scalar, the bits one client uploads (fixed by the update's shapes).
      ratio: float32 scalar, ``bits`` over 32 bits per coordinate of the update.
    """

    inner: Any
    bits: jax.Array
    ratio: jax.Array


def _leaf_sizes(spec) -> list[int]:
    return [math.prod(s.shape) for s in jax.tree.leaves(spec)]


def _wrap(inner: Aggregator, name: str, bits_of_spec, accumulate, client_init=None):
    def start(state, spec, capacity):
        bits = bits_of_spec(spec)
        return CompressedAccumulator(
            inner.start(state, spec, capacity),
            jnp.float32(bits),
            jnp.float32(bits / (32.0 * max(sum(_leaf_sizes(spec)), 1))),
        )

    def metrics(acc: CompressedAccumulator):
        return {f"{name}/bits_per_client": acc.bits, f"{name}/ratio_to_float32": acc.ratio}

    return wrapping_aggregator(
        inner, start=start, accumulate=accumulate, metrics=metrics, client_init=client_init
    )


def _client_leaf_keys(keys: jax.Array, stream: int, index: int) -> jax.Array:
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    return fold(fold(keys, stream), index)


def hadamard(x: jax.Array) -> jax.Array:
    """The normalised Walsh-Hadamard transform of the last axis (a power of two).

    ``H / sqrt(d)`` is orthogonal and symmetric, so it is its own inverse.
    O(d log d): log2(d) butterfly passes.
    """
    size = x.shape[-1]
    if size & (size - 1):
        raise ValueError(f"hadamard needs a power-of-two length; received {size}.")
    y, half = x, 1
    while half < size:
        y = y.reshape(x.shape[:-1] + (size // (2 * half), 2, half))
        a, b = y[..., 0, :], y[..., 1, :]
        y = jnp.stack([a + b, a - b], axis=-2).reshape(x.shape)
        half *= 2
    return y / jnp.sqrt(jnp.asarray(size, x.dtype))


def stochastic_quantize(x: jax.Array, bits: int, key: jax.Array) -> jax.Array:
    """One vector ``x`` [d] quantized to ``2**bits`` levels between its min and max, unbiased."""
    low, high = jnp.min(x), jnp.max(x)
    span = high - low
    levels = 2**bits - 1
    scaled = (x - low) / jnp.where(span > 0, span, 1.0) * levels
    floor = jnp.floor(scaled)
    up = jax.random.uniform(key, x.shape, x.dtype) < (scaled - floor)
    level = jnp.minimum(floor + up, levels)
    return jnp.where(span > 0, low + level * (span / levels), x)


def _padded_size(size: int) -> int:
    return 1 << max(size - 1, 0).bit_length()


def upload_size(inner: Aggregator) -> Aggregator:
    """``inner`` unchanged, with the bits one client uploads as round metrics.

    What a client sends uncompressed: each leaf of its update at its own dtype's
    width (32 bits a float32 coordinate). Under federated LoRA the update is
    the LoRA factors only, so this is the saving against full fine-tuning.

    Args:
      inner: the aggregator measured (e.g. ``mean()``).

    Returns:
      An `Aggregator` with metrics ``upload/bits_per_client`` and
      ``upload/ratio_to_float32``.

    Example:
      >>> aggregator = upload_size(mean())   # build_weighted_fed_avg(..., aggregator=aggregator)
    """
    inner = check_aggregator(inner, "inner")

    def bits_of_spec(spec):
        return sum(
            math.prod(s.shape) * jnp.dtype(s.dtype).itemsize * 8 for s in jax.tree.leaves(spec)
        )

    def accumulate(acc: CompressedAccumulator, state, c: Contributions):
        inner_acc, rows = inner.accumulate(acc.inner, state, c)
        return acc._replace(inner=inner_acc), rows

    return _wrap(inner, "upload", bits_of_spec, accumulate)


def quantized(bits: int, inner: Aggregator, *, rotation: bool = False) -> Aggregator:
    """Unbiased stochastic quantization of each client's update to ``bits`` bits a coordinate.

    Args:
      bits: bits per coordinate, 1 to 16.
      inner: the aggregator of the dequantized updates (e.g. ``mean()``).
      rotation: rotate each leaf by a randomized Hadamard transform first
        (smaller error; pads each leaf to a power of two, which the bit
        count includes).

    Returns:
      An `Aggregator` with metrics ``quantized/bits_per_client`` and
      ``quantized/ratio_to_float32``.

    Example:
      >>> aggregator = quantized(8, mean())   # about 4x fewer bits than float32
    """
    inner = check_aggregator(inner, "inner")
    if not is_integer(bits) or not 1 <= bits <= 16:
        raise ValueError(f"bits must be an int from 1 to 16; received {bits!r}.")
    bits = int(bits)

    def bits_of_spec(spec):
        sizes = _leaf_sizes(spec)
        coordinates = [_padded_size(s) if rotation else s for s in sizes]
        return sum(bits * c + 64 for c in coordinates)

    def one_leaf(leaf, keys, index):
        flat = leaf.reshape(leaf.shape[0], -1).astype(jnp.float32)
        size = flat.shape[1]
        rounding = _client_leaf_keys(keys, _ROUNDING_STREAM, index)
        if not rotation:
            out = jax.vmap(lambda v, k: stochastic_quantize(v, bits, k))(flat, rounding)
            return out.reshape(leaf.shape).astype(leaf.dtype)
        padded = _padded_size(size)
        signs_keys = _client_leaf_keys(keys, _ROTATION_STREAM, index)
        signs = jax.vmap(lambda k: jax.random.rademacher(k, (padded,), jnp.float32))(signs_keys)
        rotated = hadamard(signs * jnp.pad(flat, ((0, 0), (0, padded - size))))
        coded = jax.vmap(lambda v, k: stochastic_quantize(v, bits, k))(rotated, rounding)
        back = (signs * hadamard(coded))[:, :size]
        return back.reshape(leaf.shape).astype(leaf.dtype)

    def accumulate(acc: CompressedAccumulator, state, c: Contributions):
        leaves, treedef = jax.tree.flatten(c.values)
        values = [one_leaf(leaf, c.keys, index) for index, leaf in enumerate(leaves)]
        inner_acc, rows = inner.accumulate(
            acc.inner, state, c._replace(values=jax.tree.unflatten(treedef, values))
        )
        return acc._replace(inner=inner_acc), rows

    return _wrap(inner, "quantized", bits_of_spec, accumulate)


def top_k(k: int, inner: Aggregator, *, error_feedback: bool = True) -> Aggregator:
    """Each client sends only the ``k`` largest-magnitude coordinates of its update.

    Args:
      k: coordinates kept per client, over all leaves together (all of them
        when the update has fewer).
      inner: the aggregator of the sparse updates (e.g. ``mean()``).
      error_feedback: keep what was not sent as the client's residual, added
        to its next update (in the client table; cohorts from one population).

    Returns:
      An `Aggregator` with metrics ``top_k/bits_per_client`` and
      ``top_k/ratio_to_float32``; its per-client state is
      ``{'residual': like one update, 'inner': inner's}`` with error feedback.

    Example:
      >>> aggregator = top_k(100, mean())   # build_weighted_fed_avg(..., aggregator=aggregator)
    """
    inner = check_aggregator(inner, "inner")
    if not is_integer(k) or k < 1:
        raise ValueError(f"k must be a positive int (coordinates kept); received {k!r}.")
    k = int(k)

    def bits_of_spec(spec):
        size = sum(_leaf_sizes(spec))
        return min(k, size) * (32 + max(math.ceil(math.log2(max(size, 1))), 1))

    def client_init(spec):
        if not error_feedback:
            return inner.client_init(spec)
        residual = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), spec)
        return {"residual": residual, "inner": inner.client_init(spec)}

    def accumulate(acc: CompressedAccumulator, state, c: Contributions):
        values = c.values
        if error_feedback:
            values = jax.tree.map(jnp.add, values, c.client_states["residual"])
        leaves, treedef = jax.tree.flatten(values)
        clients = leaves[0].shape[0]
        flat = jnp.concatenate([leaf.reshape(clients, -1) for leaf in leaves], axis=1)
        kept = min(k, flat.shape[1])
        _, index = jax.lax.top_k(jnp.abs(flat), kept)
        chosen = jnp.zeros(flat.shape, bool).at[jnp.arange(clients)[:, None], index].set(True)
        sparse_flat = jnp.where(chosen, flat, 0.0)

        def unflatten(matrix):
            parts, offset = [], 0
            for leaf in leaves:
                size = math.prod(leaf.shape[1:])
                parts.append(matrix[:, offset : offset + size].reshape(leaf.shape))
                offset += size
            return jax.tree.unflatten(treedef, parts)

        inner_states = c.client_states["inner"] if error_feedback else c.client_states
        inner_acc, inner_rows = inner.accumulate(
            acc.inner, state, c._replace(values=unflatten(sparse_flat), client_states=inner_states)
        )
        if error_feedback:
            rows = {"residual": unflatten(flat - sparse_flat), "inner": inner_rows}
        else:
            rows = inner_rows
        return acc._replace(inner=inner_acc), rows

    return _wrap(inner, "top_k", bits_of_spec, accumulate, client_init)
