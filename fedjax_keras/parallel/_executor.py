"""The executor interface: how a chunk of clients runs on the devices.

An executor knows nothing of the algorithm. It receives a `ChunkProgram`:

- ``program``: the clients' `ClientProgram` (start / step / finish);
- ``read_rows(carry, info) -> rows``: the chunk's per-client persistent rows,
  read from the round's carry (the client table);
- ``absorb(carry, aggregator_state, outputs, info, rows, keys) -> carry``: adds
  the chunk's `ClientOutput` (leaves [clients, ...]) to the round's carry
  (aggregator, metrics, client table).

and runs, for each chunk of a round, ``carry -> carry``: every client's local
work, then ``absorb``, all inside compiled programs. Two executors give the
same numbers to float tolerance:

- `Vmap`: one program per chunk, clients vmapped, steps in a `lax.scan`;
- `Stepwise`: the host drives the steps; each step is one compiled call for a
  group of clients written out one after another (XLA:CPU runs plain
  convolutions instead of the grouped ones a vmap lowers to).

Both shard the clients axis over a device mesh (`Placement`).
"""

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.client import ClientBatchArrays, ClientProgram, client_key, round_key


class ChunkProgram(NamedTuple):
    """The algorithm-side pieces an executor runs (module docstring).

    Attributes:
      program: the clients' `ClientProgram`.
      read_rows: ``(carry, info) -> rows``: per-client persistent rows
        [clients, ...] (``rows['algorithm']`` goes to the client program).
      absorb: ``(carry, aggregator_state, outputs, info, rows, keys) -> carry``.
    """

    program: ClientProgram
    read_rows: Callable[..., Any]
    absorb: Callable[..., Any]


class ChunkInfo(NamedTuple):
    """Per-client facts of a chunk; every leaf [clients].

    Attributes:
      positions: int32, position in the cohort (-1 for padding clients).
      key_ids: int32, integer client ids folded into each client's key.
      valid: bool, False for padding clients.
      table_rows: int32, row of the client in the client table (0 if none).
      write: bool, write the client's new persistent row back (the last
        occurrence of a client in the cohort, and not padding).
      slots: int32, the client's distinct slot in the round (stacked aggregators).
    """

    positions: Any
    key_ids: Any
    valid: Any
    table_rows: Any
    write: Any
    slots: Any


class Chunk(NamedTuple):
    """A chunk of clients; every leaf has a leading [clients] axis.

    Attributes:
      data: `ClientBatchArrays`, leaves [clients, steps, batch, ...]; with
        ``rows`` given, its ``x`` and ``y`` are None and examples are gathered
        on the device from the round's source arrays.
      rows: int32 [clients, steps, batch] source rows of every slot, or None.
      info: `ChunkInfo`.
    """

    data: ClientBatchArrays
    rows: Any
    info: ChunkInfo


class RoundInputs(NamedTuple):
    """What every chunk of a round reads (replicated on every device).

    Attributes:
      broadcast: what the server sends every client.
      seed_and_round: uint32 [2], the run's seed and the round number.
      source: ``{'x', 'y'}`` arrays that ``Chunk.rows`` index, or None.
      aggregator_state: the aggregator's persistent state.
    """

    broadcast: Any
    seed_and_round: Any
    source: Any
    aggregator_state: Any


class HostChunk(NamedTuple):
    """Host-side (numpy) facts of a chunk that host-driven executors loop over.

    Attributes:
      valid: bool [clients].
      num_steps: int [clients], each client's real step count.
    """

    valid: np.ndarray
    num_steps: np.ndarray


class BoundExecutor(Protocol):
    """An executor bound to one `ChunkProgram` (its compiled programs cached)."""

    name: str

    def __call__(self, carry, inputs: RoundInputs, chunk: Chunk, host: HostChunk) -> Any:
        """Runs one chunk; returns the new carry."""

    def seconds_per_client_step(
        self, carry, inputs: RoundInputs, chunk: Chunk, host: HostChunk
    ) -> float:
        """Times a few client-steps of the chunk after compiling; changes nothing."""


class Executor(Protocol):
    """A way of running chunks of clients (``Vmap()``, ``Stepwise(group_size)``)."""

    name: str

    def clients_per_device(self) -> int:
        """The chunk size is rounded up to a multiple of this times the device count."""

    def bind(self, chunk_program: ChunkProgram, placement) -> BoundExecutor:
        """Compiles nothing yet; returns the runner of chunks for ``chunk_program``."""


def client_keys(seed_and_round, info: ChunkInfo) -> jax.Array:
    """Each client's key [clients] for the round (see `fedjax_keras.client.client_key`)."""
    return jax.vmap(client_key, in_axes=(None, 0, 0))(
        round_key(seed_and_round), info.positions, info.key_ids
    )


def gather_examples(source, rows, mask):
    """Examples of ``rows`` from device-resident ``source``; padding slots are zeros."""

    def one(leaf):
        if leaf.shape[0] == 0:
            # A cohort without examples: every slot is padding (jnp.take rejects an empty axis).
            return jnp.zeros(rows.shape + leaf.shape[1:], leaf.dtype)
        taken = jnp.take(leaf, rows, axis=0, mode="clip")
        keep = mask.reshape(mask.shape + (1,) * (taken.ndim - mask.ndim))
        return jnp.where(keep, taken, jnp.zeros((), taken.dtype))

    return jax.tree.map(one, source["x"]), jax.tree.map(one, source["y"])


def chunk_data(chunk: Chunk, source) -> ClientBatchArrays:
    """The chunk's batches, gathered from ``source`` when the chunk holds row indices."""
    if chunk.rows is None:
        return chunk.data
    x, y = gather_examples(source, chunk.rows, chunk.data.mask)
    return ClientBatchArrays(x, y, chunk.data.mask)
