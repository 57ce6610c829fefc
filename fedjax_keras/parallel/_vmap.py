"""The `Vmap` executor: a chunk of clients in one compiled program.

Clients are batched with `jax.vmap`, each client's steps run in a `lax.scan`,
and the chunk's contributions are absorbed into the round's carry in the same
program. On a mesh the clients axis is sharded over the devices and XLA
reduces the contributions across them. Best on GPUs and TPUs, and for dense
models everywhere; on XLA:CPU a vmapped convolution gradient lowers to a
grouped convolution, several times slower than `Stepwise` (see
docs/performance.md).
"""

import dataclasses
import functools
import time

import jax
import numpy as np

from fedjax_keras.parallel._executor import (
    Chunk,
    ChunkProgram,
    HostChunk,
    RoundInputs,
    chunk_data,
    client_keys,
)
from fedjax_keras.parallel._mesh import Placement


@dataclasses.dataclass(frozen=True)
class Vmap:
    """Runs each chunk as one program: clients vmapped, steps in a `lax.scan`.

    Args:
      scan_unroll: local steps per iteration of the scan's loop (`lax.scan`'s
        ``unroll``); more steps per iteration mean fewer loop iterations and a
        larger program.
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


class _BoundVmap:
    name = "vmap"

    def __init__(self, chunk_program: ChunkProgram, placement: Placement, scan_unroll: int):
        self._chunk_program = chunk_program
        self._placement = placement
        self._scan_unroll = scan_unroll
        self._run = placement.jit(self._run_chunk, donate_argnums=(0,))

    def _run_chunk(self, carry, inputs: RoundInputs, chunk: Chunk):
        cp = self._chunk_program
        keys = client_keys(inputs.seed_and_round, chunk.info)
        rows = cp.read_rows(carry, chunk.info)
        run = functools.partial(cp.program.run, unroll=self._scan_unroll)
        outputs = jax.vmap(run, in_axes=(None, 0, 0, 0))(
            inputs.broadcast, chunk_data(chunk, inputs.source), keys, rows["algorithm"]
        )
        return cp.absorb(carry, inputs.aggregator_state, outputs, chunk.info, rows, keys)

    def __call__(self, carry, inputs: RoundInputs, chunk: Chunk, host: HostChunk):
        return self._run(carry, inputs, self._placement.clients(chunk))

    def seconds_per_client_step(
        self, carry, inputs: RoundInputs, chunk: Chunk, host: HostChunk
    ) -> float:
        chunk = self._placement.clients(chunk)
        copy = lambda: jax.tree.map(lambda a: a.copy(), carry)  # noqa: E731 (donated)
        jax.block_until_ready(self._run(copy(), inputs, chunk))  # compiles
        fresh = copy()
        start = time.perf_counter()
        jax.block_until_ready(self._run(fresh, inputs, chunk))
        return (time.perf_counter() - start) / max(int(np.sum(host.num_steps[host.valid])), 1)
