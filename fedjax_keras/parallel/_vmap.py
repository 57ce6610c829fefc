"""The `Vmap` executor: a chunk of clients in one compiled program.

Clients are batched with `jax.vmap` and their local steps run in one loop
whose trip count is a run-time value (the chunk's largest real step count),
not a shape: chunks of different step counts share one compiled program
when their arrays have the same shape, and steps that are padding for every
client of the chunk are never run. The chunk's contributions are absorbed
into the round's carry in the same program. On a mesh the clients axis is
sharded over the devices and XLA reduces the contributions across them.

Best on GPUs and TPUs, and for dense models everywhere; on XLA:CPU a vmapped
convolution gradient lowers to a grouped convolution, several times slower
than `Stepwise` (see docs/performance.md).
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.client import ClientBatchArrays, step_key
from fedjax_keras.data import bucket
from fedjax_keras.parallel._executor import (
    Chunk,
    ChunkProgram,
    HostChunk,
    RoundInputs,
    client_keys,
    gather_examples,
)
from fedjax_keras.parallel._mesh import Placement


@dataclasses.dataclass(frozen=True)
class Vmap:
    """Runs each chunk as one program: clients vmapped, steps in a `lax.scan`.

    Args:
      scan_unroll: local steps per iteration of the steps loop; more steps per
        iteration mean fewer loop iterations and a larger program (steps past
        a client's end are masked no-ops).
    """

    scan_unroll: int = 1
    name: str = dataclasses.field(default="vmap", init=False)

    def __post_init__(self):
        if (
            not isinstance(self.scan_unroll, int)
            or isinstance(self.scan_unroll, bool)
            or self.scan_unroll < 1
        ):
            raise ValueError(f"scan_unroll must be a positive int; received {self.scan_unroll!r}.")

    def clients_per_device(self) -> int:
        return 1

    def bind(self, chunk_program: ChunkProgram, placement: Placement) -> "_BoundVmap":
        return _BoundVmap(chunk_program, placement, self.scan_unroll)


def _at_step(chunk: Chunk, source, t) -> ClientBatchArrays:
    """Every client's batch of local step ``t`` (a traced index): leaves [clients, batch, ...]."""
    take = lambda a: jax.lax.dynamic_index_in_dim(a, t, axis=1, keepdims=False)  # noqa: E731
    mask = take(chunk.data.mask)
    if chunk.rows is None:
        return ClientBatchArrays(
            jax.tree.map(take, chunk.data.x), jax.tree.map(take, chunk.data.y), mask
        )
    x, y = gather_examples(source, take(chunk.rows), mask)
    return ClientBatchArrays(x, y, mask)


class _BoundVmap:
    name = "vmap"

    def __init__(self, chunk_program: ChunkProgram, placement: Placement, scan_unroll: int):
        self._chunk_program = chunk_program
        self._placement = placement
        self._scan_unroll = scan_unroll
        self._run = placement.jit(self.run_chunk, donate_argnums=(0,))
        self._run_all = placement.jit(self._run_stacked_chunks, donate_argnums=(0,))
        self._slots = 1

    def run_chunk(self, carry, inputs: RoundInputs, chunk: Chunk, num_steps):
        """One chunk, not compiled (`fedjax_keras.engine.Sweep` vmaps it over runs).

        ``num_steps`` is the int32 trip count, `num_steps` of the chunk's `HostChunk`.
        """
        cp, program = self._chunk_program, self._chunk_program.program
        keys = client_keys(inputs.seed_and_round, chunk.info)
        rows = cp.read_rows(carry, chunk.info)
        states = rows["algorithm"]
        size = chunk.info.valid.shape[0]
        vmapped_step = jax.vmap(program.step, in_axes=(0, 0, 0, None, 0))
        carries = jax.vmap(program.start, in_axes=(None, 0), axis_size=size)(
            inputs.broadcast, states
        )
        available = chunk.data.mask.shape[1]

        def one_step(t, carries):
            # Steps past the arrays' end (the last iteration of an unrolled loop) are
            # read clamped and fully masked: no-ops.
            batch = _at_step(chunk, inputs.source, jnp.minimum(t, available - 1))
            batch = batch._replace(mask=batch.mask & (t < available))
            step_keys = jax.vmap(step_key, in_axes=(0, None))(keys, t)
            return vmapped_step(
                carries,
                {"x": batch.x, "y": batch.y, "mask": batch.mask},
                step_keys,
                inputs.broadcast,
                states,
            )

        def unrolled(i, carries):
            for j in range(self._scan_unroll):
                carries = one_step(i * self._scan_unroll + j, carries)
            return carries

        trips = (num_steps + self._scan_unroll - 1) // self._scan_unroll
        carries = jax.lax.fori_loop(0, trips, unrolled, carries)
        outputs = jax.vmap(program.finish, in_axes=(0, None, 0), axis_size=size)(
            carries, inputs.broadcast, states
        )
        return cp.absorb(carry, inputs.aggregator_state, outputs, chunk.info, rows, keys)

    def _run_stacked_chunks(self, carry, inputs: RoundInputs, chunks: Chunk, num_steps, count):
        """The first ``count`` chunks of ``chunks`` (leaves [slots, clients, ...]) in one
        program; the trip count is a run-time value, so rounds with fewer chunks than
        slots reuse it."""

        def one(index, carry):
            chunk = jax.tree.map(
                lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False), chunks
            )
            return self.run_chunk(carry, inputs, chunk, num_steps[index])

        return jax.lax.fori_loop(0, count, one, carry)

    def run_chunks(self, carry, inputs: RoundInputs, chunks: list, hosts: list):
        """Runs a round's chunks; on one device, with rows into a device-resident
        source (chunks of one shape), all of them in one call: one dispatch per
        round instead of one per chunk. The chunks are stacked into a power-of-two
        number of slots, never fewer than an earlier round used (the spare slots
        repeat the last chunk and never run), so cohorts of varying size compile
        again only when a round needs more chunks than every round before it, and
        then at most once per power of two."""
        if not self._placement.single_device or chunks[0].rows is None:
            for chunk, host in zip(chunks, hosts):
                carry = self(carry, inputs, chunk, host)
            return carry
        slots = max(bucket(len(chunks), "pow2"), self._slots)
        self._slots = slots  # a compilation cache's key, like jit's: no option changes
        padded = chunks + [chunks[-1]] * (slots - len(chunks))
        stacked = jax.tree.map(lambda *leaves: np.stack(leaves), *padded)
        steps = [self.num_steps(host) for host in hosts]
        steps = np.array(steps + [0] * (slots - len(chunks)), np.int32)
        return self._run_all(carry, inputs, stacked, steps, np.int32(len(chunks)))

    @staticmethod
    def num_steps(host: HostChunk):
        """int32: the chunk's longest real client, the loop's trip count."""
        return np.int32(np.max(host.num_steps[host.valid], initial=0))

    def __call__(self, carry, inputs: RoundInputs, chunk: Chunk, host: HostChunk):
        chunk = self._placement.clients(chunk)
        return self._run(carry, inputs, chunk, self.num_steps(host))

    def seconds_per_client_step(
        self, carry, inputs: RoundInputs, chunk: Chunk, host: HostChunk
    ) -> float:
        chunk = self._placement.clients(chunk)
        copy = lambda: jax.tree.map(lambda a: a.copy(), carry)  # noqa: E731 (donated)
        steps = self.num_steps(host)
        jax.block_until_ready(self._run(copy(), inputs, chunk, steps))  # compiles
        fresh = copy()
        start = time.perf_counter()
        jax.block_until_ready(self._run(fresh, inputs, chunk, steps))
        return (time.perf_counter() - start) / max(int(np.sum(host.num_steps[host.valid])), 1)
