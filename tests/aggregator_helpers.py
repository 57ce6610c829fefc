"""Drive an aggregator by hand (no engine): fake contributions, one round at a time."""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.aggregation import Contributions


def contributions(values, *, weights=None, keep=None, slots=None, seed=0, client_states=()):
    """`Contributions` of ``values`` (a dict of arrays [clients, ...]); all kept by default."""
    values = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), values)
    n = jax.tree.leaves(values)[0].shape[0]
    return Contributions(
        values=values,
        weights=jnp.ones(n, jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32),
        keep=jnp.ones(n, bool) if keep is None else jnp.asarray(keep),
        slots=jnp.arange(n, dtype=jnp.int32) if slots is None else jnp.asarray(slots, jnp.int32),
        keys=jax.random.split(jax.random.PRNGKey(seed), n),
        client_states=client_states,
    )


def spec_of(values):
    """The spec of one client's values (leaves [clients, ...] -> ShapeDtypeStruct [...])."""
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v)[1:], jnp.float32), values)


def run_round(aggregator, chunks, *, state=None, key=0, capacity=None):
    """One round over ``chunks`` (a list of `Contributions`): ``(value, state, metrics, rows)``."""
    spec = spec_of(chunks[0].values)
    state = aggregator.init(spec) if state is None else state
    if capacity is None:
        capacity = sum(len(c.keep) for c in chunks)
    acc = aggregator.start(state, spec, capacity)
    # Compiled as the engine does (one program each), and far faster than op by op.
    accumulate, finalize = jax.jit(aggregator.accumulate), jax.jit(aggregator.finalize)
    rows = []
    for chunk in chunks:
        acc, chunk_rows = accumulate(acc, state, chunk)
        rows.append(chunk_rows)
    value, state, metrics = finalize(acc, state, jax.random.PRNGKey(key))
    return value, state, metrics, rows
