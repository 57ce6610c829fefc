"""Simulated Byzantine clients: an aggregator wrapper that corrupts some clients' updates.

`attacked(inner, fraction, kind, scale)` replaces the update of each
malicious client before ``inner`` sees it:

- ``'sign_flip'``: ``-scale * update`` (with ``scale`` > 1 the attackers
  outweigh the honest clients of a plain mean);
- ``'scale'``: ``scale * update``;
- ``'gaussian'``: ``scale * N(0, 1)`` in every coordinate (the update ignored).

Which clients are malicious is drawn from the clients' keys
(`Contributions.keys`), so it follows from the run's seed and repeats bit
for bit. Two ways, chosen by ``fixed_per_client``:

- ``True`` (default): each client of the population is malicious or honest
  for the whole run. A client draws its role (malicious with probability
  ``fraction``) the first time it takes part, and the role is kept in the
  aggregator's per-client state (``client_init``): a row of the process's
  client table, like an error-feedback residual. So about ``fraction`` of
  the population is Byzantine, and a cohort holds a varying number of them.
  The process then keeps per-client state: sample every cohort from one
  population (``data.sample_clients``), as for SCAFFOLD.
- ``False``: every kept client of every round is malicious with probability
  ``fraction``, redrawn each round: a fraction of every cohort (in
  expectation) is Byzantine and no client table is needed (any cohort,
  lists included).

Round metric: ``attack/malicious_fraction``, the fraction of the round's
kept clients that were malicious.
"""

import functools
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

ATTACKS = ("sign_flip", "scale", "gaussian")

# Folded into each client's aggregator key: the role draw and the Gaussian
# values never share a stream with another wrapper's randomness.
_ROLE_STREAM, _VALUE_STREAM = 0x617474, 0x617475
_UNDECIDED, _HONEST, _MALICIOUS = 0, 1, 2


class AttackAccumulator(NamedTuple):
    """The accumulator of `attacked`.

    Attributes:
      inner: the inner aggregator's accumulator.
      malicious: float32 scalar, kept clients that were malicious.
      kept: float32 scalar, kept clients.
    """

    inner: Any
    malicious: jax.Array
    kept: jax.Array


def corrupt(values, keys: jax.Array, kind: str, scale: float):
    """Every client's values as a malicious client of ``kind`` sends them; leaves [clients, ...]."""
    if kind == "sign_flip":
        return jax.tree.map(lambda v: (-scale * v).astype(v.dtype), values)
    if kind == "scale":
        return jax.tree.map(lambda v: (scale * v).astype(v.dtype), values)
    leaves, treedef = jax.tree.flatten(values)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    value_keys = fold(keys, _VALUE_STREAM)
    noisy = []
    for index, leaf in enumerate(leaves):
        normal = functools.partial(jax.random.normal, shape=leaf.shape[1:], dtype=leaf.dtype)
        noisy.append(scale * jax.vmap(normal)(fold(value_keys, index)))
    return jax.tree.unflatten(treedef, noisy)


def attacked(
    inner: Aggregator,
    fraction: float,
    kind: str = "sign_flip",
    scale: float = 1.0,
    *,
    fixed_per_client: bool = True,
) -> Aggregator:
    """Makes a ``fraction`` of the clients Byzantine before ``inner`` aggregates.

    Args:
      inner: the aggregator under attack (``mean()``, ``median()``, ...).
      fraction: the probability that a client is malicious, in [0, 1].
      kind: ``'sign_flip'``, ``'scale'`` or ``'gaussian'`` (module docstring).
      scale: the attack's factor (``'sign_flip'``, ``'scale'``) or stddev (``'gaussian'``).
      fixed_per_client: True: a client keeps its role for the whole run (kept
        in the client table); False: roles are redrawn every round.

    Returns:
      An `Aggregator` whose metrics add ``attack/malicious_fraction``.

    Example:
      >>> aggregator = attacked(median(), fraction=0.2, kind="sign_flip", scale=10.0)
    """
    inner = check_aggregator(inner, "inner")
    if kind not in ATTACKS:
        raise ValueError(f"kind must be one of {ATTACKS}; received {kind!r}.")
    if not is_real(fraction):
        raise ValueError(f"fraction must be a number in [0, 1]; received {fraction!r}.")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1]; received {fraction!r}.")
    if not is_real(scale):
        raise ValueError(f"scale must be a number; received {scale!r}.")
    fraction, scale = float(fraction), float(scale)

    def client_init(spec):
        if not fixed_per_client:
            return inner.client_init(spec)
        return {"role": jnp.int8(_UNDECIDED), "inner": inner.client_init(spec)}

    def start(state, spec, capacity):
        zero = jnp.zeros((), jnp.float32)
        return AttackAccumulator(inner.start(state, spec, capacity), zero, zero)

    def accumulate(acc: AttackAccumulator, state, c: Contributions):
        role_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(c.keys, _ROLE_STREAM)
        draws = jax.vmap(jax.random.uniform)(role_keys) < fraction
        drawn_role = jnp.where(draws, _MALICIOUS, _HONEST).astype(jnp.int8)
        if fixed_per_client:
            stored = c.client_states["role"]
            role = jnp.where(stored == _UNDECIDED, drawn_role, stored)
            inner_rows = c.client_states["inner"]
        else:
            role, inner_rows = drawn_role, c.client_states
        malicious = c.keep & (role == _MALICIOUS)
        bad = corrupt(c.values, c.keys, kind, scale)
        values = jax.tree.map(
            lambda v, b: jnp.where(malicious.reshape((-1,) + (1,) * (v.ndim - 1)), b, v),
            c.values,
            bad,
        )
        inner_acc, inner_rows = inner.accumulate(
            acc.inner, state, c._replace(values=values, client_states=inner_rows)
        )
        rows = {"role": role, "inner": inner_rows} if fixed_per_client else inner_rows
        new_acc = AttackAccumulator(
            inner_acc,
            acc.malicious + jnp.sum(malicious, dtype=jnp.float32),
            acc.kept + jnp.sum(c.keep, dtype=jnp.float32),
        )
        return new_acc, rows

    def metrics(acc: AttackAccumulator):
        return {"attack/malicious_fraction": acc.malicious / jnp.maximum(acc.kept, 1.0)}

    return wrapping_aggregator(
        inner, start=start, accumulate=accumulate, metrics=metrics, client_init=client_init
    )
