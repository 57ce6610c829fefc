"""The round plan: a state and a cohort -> host arrays for every chunk of the round.

Everything a round decides on the host before anything runs, as functions with
explicit arguments: where each example goes (`fedjax_keras.data.plan_cohort`:
static-shape chunks [clients, steps, batch, ...]), which clients drop out or
straggle (`fedjax_keras.data.UnreliableClients`), each client's key id and row
of the client table, the population's device copy, and the chunks' index
arrays (`chunk_arrays`). `FederatedProcess.next` and `Sweep.next` both run
rounds planned here.

Padded axes are rounded up by `fedjax_keras.data.bucket`: a chunk's steps by
``step_buckets``, the rows of a device source "geometric", the step axis the
chunks of one round share "pow2".
"""

import zlib
from typing import Any, NamedTuple

import jax
import numpy as np

from fedjax_keras.client import ClientBatchArrays, ClientTable
from fedjax_keras.data import CohortPlan, FederatedData, bucket, completed_steps, plan_cohort
from fedjax_keras.engine._options import EngineOptions
from fedjax_keras.engine._state import ServerState
from fedjax_keras.parallel import Chunk, ChunkInfo, HostChunk, Placement, RoundInputs

# The slot of a client that writes no per-client output: out of range, dropped.
_NO_SLOT = np.iinfo(np.int32).max


def client_key_ids(client_ids) -> np.ndarray:
    """int32 [clients]: integer ids (crc32 of ``str(id)`` for non-integers) for key folding."""
    try:
        ids = np.asarray(client_ids)
        if ids.dtype.kind in "iu":
            return (ids.astype(np.int64) % (2**31 - 1)).astype(np.int32)
    except (TypeError, ValueError):
        pass
    return np.array([zlib.crc32(str(cid).encode()) % (2**31 - 1) for cid in client_ids], np.int32)


def last_occurrence(positions: np.ndarray) -> np.ndarray:
    """bool [n]: True at the last occurrence of each value (sampling with replacement)."""
    last = np.zeros(len(positions), bool)
    _, from_end = np.unique(positions[::-1], return_index=True)
    last[len(positions) - 1 - from_end] = True
    return last


def table_for(table: ClientTable | None, cohort: FederatedData) -> ClientTable | None:
    """The client table, sized to the cohort's population if still unsized.

    Raises:
      ValueError: the cohort comes from a population of another size.
    """
    if table is None:
        return None
    population = cohort.population_size
    if table.population_size == 0:
        return ClientTable.create(table.default, population)
    if population != table.population_size:
        raise ValueError(
            f"The cohort comes from a population of {population} clients, but the state's "
            f"client table has {table.population_size} rows (population_size). Sample "
            "every cohort from the same population, or build the process with "
            f"population_size={population}."
        )
    return table


def pad_leading(tree, size: int):
    """Every leaf's leading axis padded with zeros to ``size`` rows."""

    def pad(leaf):
        extra = size - leaf.shape[0]
        if extra <= 0:
            return leaf
        return np.concatenate([leaf, np.zeros((extra,) + leaf.shape[1:], leaf.dtype)])

    return jax.tree.map(pad, tree)


class SourceCache(NamedTuple):
    """A population's device copy, kept between rounds.

    Attributes:
      key: ``(id, shape)`` of every host leaf the copy was made from.
      on_device: the device arrays, leaves [bucketed rows, ...].
      host: the host arrays, kept referenced so that their ``id`` stays unique.
    """

    key: tuple
    on_device: Any
    host: Any


def device_source(
    source: dict,
    cached: SourceCache | None,
    *,
    data_placement: str,
    limit_bytes: int,
    placement: Placement,
) -> tuple[Any, SourceCache | None]:
    """The cohort's source arrays on the devices, or None to batch on the host.

    A population reused round after round is transferred once and kept; a
    fresh source (a list cohort) is padded to a bucket of rows, so the
    programs that gather from it see a few shapes, not one per round.

    Args:
      source: the cohort's source rows (`FederatedData.source_rows`), leaves [rows, ...].
      cached: what an earlier call returned, or None.
      data_placement: 'device', 'host' or 'auto' (`EngineOptions.data_placement`).
      limit_bytes: sources larger than this are batched on the host under 'auto'.
      placement: the mesh the copy is replicated over.

    Returns:
      ``(device arrays or None, the cache to pass next time)``.
    """
    leaves = jax.tree.leaves(source)
    key = tuple((id(leaf), leaf.shape) for leaf in leaves)
    if cached is not None and cached.key == key:
        return cached.on_device, cached
    size = sum(leaf.nbytes for leaf in leaves)
    if data_placement == "host" or (data_placement == "auto" and size > limit_bytes):
        return None, cached
    rows = leaves[0].shape[0] if leaves else 0
    padded = pad_leading(source, bucket(max(rows, 1), "geometric"))
    on_device = placement.replicated(jax.device_put(padded))
    return on_device, SourceCache(key, on_device, source)


class CohortClients(NamedTuple):
    """Per-client facts of a round, in cohort order (host arrays).

    Attributes:
      key_ids: int32 [cohort]; folded into each client's key.
      table_rows: int [cohort]; the client's row of the client table (its
        population position).
      last: bool [cohort], True where a client writes its table row (its last
        draw when sampled with replacement); None for an algorithm without
        per-client state.
      reported: bool [cohort], False for a dropout; None when all report.
      work: float [cohort], the fraction of its steps each client completes;
        None when all complete.
    """

    key_ids: np.ndarray
    table_rows: np.ndarray
    last: np.ndarray | None
    reported: np.ndarray | None
    work: np.ndarray | None


def cohort_clients(
    cohort: FederatedData, *, stateful: bool, unreliable, seed: int, round_num: int
) -> CohortClients:
    """Key ids, table rows and the unreliable-client draw of a round's cohort.

    Args:
      cohort: the round's clients.
      stateful: whether the algorithm keeps a client table.
      unreliable: `fedjax_keras.data.UnreliableClients` or None.
      seed: the run's seed; with ``round_num`` it fixes the draw.
      round_num: the round's number.
    """
    # Population ids are plain (vectorised) even when repeats are renamed; the
    # cohort position folded into each key keeps repeated draws distinct.
    positions = cohort.population_positions
    reported = work = None
    if unreliable is not None and unreliable.active:
        reported, work = unreliable.draw(seed, round_num, cohort.num_clients)
    return CohortClients(
        key_ids=client_key_ids(cohort.population_ids),
        table_rows=positions,
        last=last_occurrence(positions) if stateful else None,
        reported=reported,
        work=work,
    )


class RoundPlan(NamedTuple):
    """A round planned on the host: what its chunks and its finish need.

    Attributes:
      state: the `ServerState`, replicated, its client table sized to the population.
      cohort_plan: the `fedjax_keras.data.CohortPlan` of the cohort's batches.
      inputs: the `fedjax_keras.parallel.RoundInputs` every chunk reads.
      source: the population's device arrays, or None when chunks carry batches.
      clients: the cohort's `CohortClients`.
      capacity: slots for per-client outputs (stacked aggregators, reports), or 0.
      row_steps: the step axis every chunk of the round is padded to when it
        carries row indices (one program for chunks of different lengths).
      round_num: the round's number.
      seed: the run's seed.
      cohort: the round's clients, checked (a list cohort converted).
    """

    state: ServerState
    cohort_plan: CohortPlan
    inputs: RoundInputs
    source: Any
    clients: CohortClients
    capacity: int
    row_steps: int
    round_num: int
    seed: int
    cohort: FederatedData


def plan_round(
    state: ServerState,
    cohort: FederatedData,
    *,
    options: EngineOptions,
    placement: Placement,
    broadcast,
    source,
    needs_slots: bool,
) -> RoundPlan:
    """Plans one round on the host (nothing runs).

    Args:
      state: a checked `ServerState`.
      cohort: the round's clients, checked to fit the model.
      options: the process's `EngineOptions`.
      placement: the mesh the round runs on.
      broadcast: the algorithm's ``broadcast(state)``.
      source: from `device_source` (None: batches are built on the host).
      needs_slots: whether clients write per-client outputs (a stacked
        aggregator, client reports).

    Raises:
      ValueError: a cohort from a population of another size than the table's.
    """
    table = table_for(state.client_states, cohort)
    round_num, seed = int(state.round_num), int(state.seed)
    plan = plan_cohort(
        cohort,
        batch_size=options.batch_size,
        epochs=options.epochs,
        shuffle=options.shuffle,
        seed=seed * 2**32 + round_num,
        chunk_size=options.chunk_size_for(cohort.num_clients, placement.num_devices),
        step_buckets=options.step_buckets,
    )
    seed_and_round = np.array([seed % 2**32, round_num % 2**32], np.uint32)
    state = placement.replicated(state.replace(client_states=table))
    inputs = placement.replicated(RoundInputs(broadcast(state), seed_and_round, None, None))
    inputs = inputs._replace(source=source, aggregator_state=state.aggregator_state)
    clients = cohort_clients(
        cohort,
        stateful=table is not None,
        unreliable=options.unreliable_clients,
        seed=seed,
        round_num=round_num,
    )
    return RoundPlan(
        state=state,
        cohort_plan=plan,
        inputs=inputs,
        source=source,
        clients=clients,
        capacity=plan.num_chunks * plan.chunk_size if needs_slots else 0,
        row_steps=bucket(int(plan.chunk_steps.max()), "pow2"),
        round_num=round_num,
        seed=seed,
        cohort=cohort,
    )


def _pad_steps(array: np.ndarray, steps: int) -> np.ndarray:
    """``array`` [clients, s, ...] zero-padded to [clients, steps, ...] (np.pad costs
    about 20x this, a real share of a small model's round)."""
    out = np.zeros((array.shape[0], steps) + array.shape[2:], array.dtype)
    out[:, : array.shape[1]] = array
    return out


def chunk_arrays(round_plan: RoundPlan, index: int, row_steps: int) -> tuple[Chunk, HostChunk]:
    """Chunk ``index`` of a planned round, as host arrays.

    Args:
      round_plan: from `plan_round`.
      index: the chunk, in [0, ``round_plan.cohort_plan.num_chunks``).
      row_steps: the step axis of a chunk of row indices (``round_plan.row_steps``,
        or the largest of several runs' in a sweep); ignored for host batches.

    Returns:
      ``(Chunk, HostChunk)``: the chunk's data (batches [clients, steps, batch,
      ...], or row indices [clients, row_steps, batch] into the device source)
      and per-client info, and what the host knows of it (valid clients, their
      step counts).
    """
    plan, clients = round_plan.cohort_plan, round_plan.clients
    on_device = round_plan.source is not None
    stateful = clients.last is not None
    batches = plan.chunk_rows(index) if on_device else plan.chunk(index)
    positions = np.asarray(batches.client_positions)
    at = np.maximum(positions, 0)
    valid = positions >= 0
    mask, num_steps = batches.mask, np.asarray(batches.num_steps)
    if clients.reported is not None:
        # Dropouts leave the round like padding; stragglers stop early (masked steps).
        valid &= clients.reported[at]
        num_steps = np.where(valid, completed_steps(num_steps, clients.work[at]), 0)
        mask = mask & (np.arange(mask.shape[1]) < num_steps[:, None])[:, :, None]
    if on_device:
        # Row indices are cheap: pad every chunk of the round to one step count,
        # so chunks of different lengths share one program (the loop stops at
        # the chunk's own length).
        data = ClientBatchArrays(None, None, _pad_steps(mask, row_steps))
        rows = _pad_steps(batches.rows, row_steps)
    else:
        data, rows = ClientBatchArrays(batches.x, batches.y, mask), None
    slots = index * plan.chunk_size + np.arange(len(positions))
    info = ChunkInfo(
        positions=positions.astype(np.int32),
        key_ids=np.where(valid, clients.key_ids[at], 0).astype(np.int32),
        valid=valid,
        table_rows=np.where(valid, clients.table_rows[at], 0).astype(np.int32)
        if stateful
        else np.zeros(len(positions), np.int32),
        write=valid & clients.last[at] if stateful else np.zeros(len(positions), bool),
        slots=np.where(valid, slots, _NO_SLOT).astype(np.int32),
    )
    return Chunk(data, rows, info), HostChunk(valid, num_steps)
