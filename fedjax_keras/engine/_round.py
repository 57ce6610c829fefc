"""The pure pieces of a round that every algorithm shares, compiled by the process.

A round's carry (`RoundCarry`) holds the aggregator's accumulator, the
round's metric sums (`RoundStats`) and the client table. Each chunk's
`ClientOutput` is absorbed into it (`make_chunk_program`); once every chunk
has run, `finish_round` finalizes the aggregate, applies the algorithm's
server update and guards it:

- a client whose results are not finite (NaN or inf anywhere) is removed with
  `jnp.where` (never multiplied by a zero weight: ``0 * NaN`` is NaN),
  counted in ``num_dropped_clients``, and its stored state is not written;
- a client without examples is counted in ``num_empty_clients`` and adds
  nothing;
- a round in which no client counted changes nothing but the round number;
- a server update that is not finite is never applied: the previous model,
  optimizer, algorithm, aggregator and client states are kept and the event
  is reported (``server_update_nonfinite``), so the process can raise.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._tree import all_true, tree_where
from fedjax_keras.aggregation import Contributions, masked_sum
from fedjax_keras.client import ClientOutput
from fedjax_keras.engine._algorithm import FederatedAlgorithm
from fedjax_keras.models import Model
from fedjax_keras.parallel import ChunkInfo, ChunkProgram

# Folded into a client's key for its aggregator randomness; local steps fold
# their index (< 2**31 - 1), so the two streams never meet.
_AGGREGATOR_STREAM = 2**31 - 1
_FINALIZE_STREAM, _SERVER_STREAM = 1, 2


class RoundStats(NamedTuple):
    """A round's metric sums over the clients that counted.

    Attributes:
      metrics: merged unfinalized metric state.
      loss_sum: float32, sum of ``loss * examples``.
      num_examples: int32, examples trained on.
      num_clients: int32, clients aggregated (valid, finite, with examples).
      num_empty: int32, clients without examples.
      num_dropped: int32, clients with examples whose results were not finite.
    """

    metrics: Any
    loss_sum: jax.Array
    num_examples: jax.Array
    num_clients: jax.Array
    num_empty: jax.Array
    num_dropped: jax.Array


class RoundCarry(NamedTuple):
    """What runs from chunk to chunk of a round.

    Attributes:
      aggregate: the aggregator's accumulator.
      stats: `RoundStats`.
      table: the `ClientTable` (being written), or None.
      reports: the clients' `ClientOutput.report` by slot, leaves [capacity,
        ...], plus ``'kept'`` (bool [capacity]); ``()`` when nothing is reported.
    """

    aggregate: Any
    stats: RoundStats
    table: Any
    reports: Any = ()


def start_carry(algorithm: FederatedAlgorithm, model: Model, spec, agg_state, table, capacity):
    """The empty carry of a round; the table is copied (the caller's state stays valid).

    Args:
      spec: `ClientOutput` of `jax.ShapeDtypeStruct`: one client's output.
      capacity: client slots of the round (padding included); 0 when neither
        the aggregator nor the reports need them.
    """
    zero_f, zero_i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
    stats = RoundStats(model.init_metrics(), zero_f, zero_i, zero_i, zero_i, zero_i)
    table = None if table is None else jax.tree.map(jnp.copy, table)
    reports = ()
    if jax.tree.leaves(spec.report):
        reports = jax.tree.map(
            lambda s: jnp.full((capacity,) + s.shape, jnp.nan if _inexact(s) else 0, s.dtype),
            {"report": spec.report, "kept": jax.ShapeDtypeStruct((), bool)},
        )
    aggregate = algorithm.aggregator.start(agg_state, spec.update, capacity)
    return RoundCarry(aggregate, stats, table, reports)


def _inexact(spec) -> bool:
    return jnp.issubdtype(spec.dtype, jnp.inexact)


def _all_finite(tree, num_clients: int) -> jax.Array:
    """bool [clients]: whether every inexact leaf (leaves [clients, ...]) is finite."""
    flags = [
        jnp.all(jnp.isfinite(leaf.reshape(num_clients, -1)), axis=1)
        for leaf in jax.tree.leaves(tree)
        if jnp.issubdtype(leaf.dtype, jnp.inexact)
    ]
    if not flags:
        return jnp.ones((num_clients,), bool)
    # Not a chain of `&`: every leaf's masked sum reads the result (see all_true).
    return all_true(jnp.stack(flags, axis=1))


def make_chunk_program(algorithm: FederatedAlgorithm, model: Model) -> ChunkProgram:
    """The `ChunkProgram` executors run for ``algorithm``."""

    def read_rows(carry: RoundCarry, info: ChunkInfo):
        if carry.table is None:
            return {"algorithm": (), "aggregator": ()}
        return carry.table.gather(info.table_rows)

    def absorb(carry: RoundCarry, agg_state, outputs: ClientOutput, info: ChunkInfo, rows, keys):
        num_clients = info.valid.shape[0]
        finite = _all_finite(
            (outputs.update, outputs.loss_sum, outputs.client_state, outputs.weight), num_clients
        )
        has_examples = outputs.num_examples > 0
        keep = info.valid & finite & has_examples
        agg_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, _AGGREGATOR_STREAM)
        accumulator, agg_rows = algorithm.aggregator.accumulate(
            carry.aggregate,
            agg_state,
            Contributions(
                outputs.update,
                jnp.asarray(outputs.weight, jnp.float32),
                keep,
                info.slots,
                agg_keys,
                rows["aggregator"],
            ),
        )
        s = carry.stats
        stats = RoundStats(
            model.merge_metrics(s.metrics, masked_sum(outputs.metrics, keep)),
            s.loss_sum + jnp.sum(jnp.where(keep, outputs.loss_sum, 0.0)),
            s.num_examples + jnp.sum(jnp.where(keep, outputs.num_examples, 0)).astype(jnp.int32),
            s.num_clients + jnp.sum(keep).astype(jnp.int32),
            s.num_empty + jnp.sum(info.valid & ~has_examples).astype(jnp.int32),
            s.num_dropped + jnp.sum(info.valid & has_examples & ~finite).astype(jnp.int32),
        )
        table = carry.table
        if table is not None:
            new_rows = {"algorithm": outputs.client_state, "aggregator": agg_rows}
            table = table.scatter(info.table_rows, new_rows, info.write & keep)
        reports = carry.reports
        if reports != ():
            # Padding clients hold an out-of-range slot: mode="drop" discards them.
            reports = jax.tree.map(
                lambda buffer, new: buffer.at[info.slots].set(new, mode="drop"),
                reports,
                {"report": outputs.report, "kept": keep},
            )
        return RoundCarry(accumulator, stats, table, reports)

    return ChunkProgram(algorithm.client_program, read_rows, absorb)


def _leaf_finite(tree) -> jax.Array:
    """bool [leaves]: whether each inexact leaf of ``tree`` is finite (True for the others)."""
    flags = [
        jnp.all(jnp.isfinite(leaf)) if jnp.issubdtype(leaf.dtype, jnp.inexact) else jnp.array(True)
        for leaf in jax.tree.leaves(tree)
    ]
    return jnp.stack(flags) if flags else jnp.ones((0,), bool)


def finish_round(algorithm: FederatedAlgorithm, model: Model, state, carry: RoundCarry, key):
    """``(state, carry, round key) -> (state, metrics, finite flags, reports)``; pure.

    Returns the new state (round counters excluded: the host sets them), the
    round's metrics, bool [leaves] flags saying which leaves of the proposed
    server state (model, optimizer, algorithm state) were finite, and the
    clients' reports by slot (``()`` if none).
    """
    stats = carry.stats
    aggregate, agg_state, agg_metrics = algorithm.aggregator.finalize(
        carry.aggregate, state.aggregator_state, jax.random.fold_in(key, _FINALIZE_STREAM)
    )
    proposed, server_metrics = algorithm.server_update(
        state.replace(aggregator_state=agg_state, client_states=carry.table),
        aggregate,
        jax.random.fold_in(key, _SERVER_STREAM),
    )
    checked = (proposed.model, proposed.optimizer_state, proposed.algorithm_state)
    flags = _leaf_finite(checked)
    any_client = stats.num_clients > 0
    nonfinite = any_client & ~all_true(flags)  # every leaf's tree_where reads it
    accept = any_client & ~nonfinite
    new_state = state.replace(
        model=tree_where(accept, proposed.model, state.model),
        optimizer_state=tree_where(accept, proposed.optimizer_state, state.optimizer_state),
        algorithm_state=tree_where(accept, proposed.algorithm_state, state.algorithm_state),
        aggregator_state=tree_where(accept, proposed.aggregator_state, state.aggregator_state),
        client_states=tree_where(~nonfinite, carry.table, state.client_states),
    )
    has_examples = stats.num_examples > 0
    # Metrics with nothing behind them are NaN, not a misleading 0.0.
    nan_if_empty = lambda value: jnp.where(has_examples, value, jnp.nan)  # noqa: E731
    metrics = {
        name: nan_if_empty(value) for name, value in model.finalize_metrics(stats.metrics).items()
    }
    metrics["loss"] = nan_if_empty(
        stats.loss_sum / jnp.maximum(stats.num_examples, 1).astype(jnp.float32)
    )
    metrics.update(agg_metrics)
    metrics.update(server_metrics)
    metrics["num_examples"] = stats.num_examples
    metrics["num_clients"] = stats.num_clients
    metrics["num_empty_clients"] = stats.num_empty
    metrics["num_dropped_clients"] = stats.num_dropped
    metrics["server_update_nonfinite"] = nonfinite.astype(jnp.int32)
    return new_state, metrics, flags, carry.reports
