"""The `Stepwise` executor: the host drives the local steps, a group of clients per call.

Each local step is one compiled call in which a group of clients is written
out one after another (not vmapped): XLA:CPU then runs plain convolutions
instead of the grouped convolutions a vmap lowers to, and a convolution
outside a loop instead of inside a `lax.scan` (jax-ml/jax#12868). Padding
clients and a group's trailing padded steps are skipped on the host.

The step programs see one step's batches ``[group, batch, ...]``, never a
chunk's ``[clients, steps, ...]`` arrays, so they compile once per group size
whatever the chunks' step counts. On a mesh each device runs ``group_size``
clients of the group (`jax.shard_map`); the start and finish programs are
sharded over the clients axis like `Vmap`'s.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from fedjax_keras.client import ClientBatchArrays, client_key, round_key, step_key
from fedjax_keras.parallel._executor import (
    Chunk,
    ChunkInfo,
    ChunkProgram,
    HostChunk,
    RoundInputs,
    client_keys,
    gather_examples,
)
from fedjax_keras.parallel._mesh import CLIENTS, Placement


@dataclasses.dataclass(frozen=True)
class Stepwise:
    """Drives local steps from the host, ``group_size`` clients per device per call.

    Args:
      group_size: clients written out in one step program on each device; 1
        (the name 'sequential') runs one client per call, more (the name
        'unroll') let XLA overlap independent clients.
    """

    group_size: int = 1

    def __post_init__(self):
        if (
            not isinstance(self.group_size, int)
            or isinstance(self.group_size, bool)
            or self.group_size < 1
        ):
            raise ValueError(f"group_size must be a positive int; received {self.group_size!r}.")

    @property
    def name(self) -> str:
        return "sequential" if self.group_size == 1 else "unroll"

    def clients_per_device(self) -> int:
        return self.group_size

    def bind(self, chunk_program: ChunkProgram, placement: Placement) -> "_BoundStepwise":
        return _BoundStepwise(chunk_program, placement, self.group_size, self.name)


def _take(tree, index):
    return jax.tree.map(lambda a: a[index], tree)


def _stack(trees):
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


class _BoundStepwise:
    def __init__(self, chunk_program: ChunkProgram, placement: Placement, group_size, name):
        self.name = name
        self._cp = chunk_program
        self._placement = placement
        self._per_device = group_size
        self._group = group_size * placement.num_devices
        self._start = placement.jit(self._start_group, replicated_outputs=False)
        step = self._step_group
        if not placement.single_device:
            clients, same = PartitionSpec(CLIENTS), PartitionSpec()
            step = jax.shard_map(
                step,
                mesh=placement.mesh,
                in_specs=(clients, same, clients, clients, same, clients, clients, same),
                out_specs=clients,
                check_vma=False,
            )
        self._step = jax.jit(step, donate_argnums=(0,))
        self._finish = placement.jit(self._finish_group, donate_argnums=(0,))

    # ----------------------------------------------------------- compiled pieces
    def _start_group(self, carry, broadcast, info: ChunkInfo):
        rows = self._cp.read_rows(carry, info)
        start = self._cp.program.start
        carries = jax.vmap(start, in_axes=(None, 0), axis_size=info.valid.shape[0])(
            broadcast, rows["algorithm"]
        )
        return carries, rows

    def _step_group(self, carries, broadcast, batch, source_rows, source, states, ids, sr_step):
        """One local step of the (device-local) group, clients written out one by one."""
        seed_and_round, step = sr_step
        positions, key_ids = ids
        if source_rows is not None:
            x, y = gather_examples(source, source_rows, batch.mask)
            batch = ClientBatchArrays(x, y, batch.mask)
        new = []
        for g in range(batch.mask.shape[0]):
            one = _take(batch, g)
            key = step_key(client_key(round_key(seed_and_round), positions[g], key_ids[g]), step)
            new.append(
                self._cp.program.step(
                    _take(carries, g),
                    {"x": one.x, "y": one.y, "mask": one.mask},
                    key,
                    broadcast,
                    _take(states, g),
                )
            )
        return _stack(new)

    def _finish_group(self, carry, inputs: RoundInputs, carries, rows, info: ChunkInfo):
        finish = self._cp.program.finish
        outputs = jax.vmap(finish, in_axes=(0, None, 0), axis_size=info.valid.shape[0])(
            carries, inputs.broadcast, rows["algorithm"]
        )
        keys = client_keys(inputs.seed_and_round, info)
        return self._cp.absorb(carry, inputs.aggregator_state, outputs, info, rows, keys)

    # ----------------------------------------------------------------- host loop
    def _groups(self, host: HostChunk):
        """Index arrays [group] of the chunk's real clients; a short last group repeats one."""
        real = np.flatnonzero(host.valid)
        for begin in range(0, len(real), self._group):
            members = real[begin : begin + self._group]
            padding = np.full(self._group - len(members), members[-1])
            yield members, np.concatenate([members, padding])

    def _group_info(self, chunk: Chunk, members, picked) -> ChunkInfo:
        info = _take(chunk.info, picked)
        is_member = np.arange(self._group) < len(members)
        # A repeated member stands in for padding: it must not count, be written
        # back, or take its original's slot (an out-of-range slot is dropped).
        return info._replace(
            valid=info.valid & is_member,
            write=info.write & is_member,
            slots=np.where(is_member, info.slots, np.iinfo(np.int32).max).astype(np.int32),
        )

    def _run_steps(self, carries, inputs, chunk, picked, rows, info, steps):
        """Runs local steps ``steps`` (indices into the chunk's steps) of a group."""
        place = self._placement.clients
        data = _take(chunk.data, picked)
        source_rows = None if chunk.rows is None else chunk.rows[picked]
        ids = place((info.positions, info.key_ids))
        for step in steps:
            carries = self._step(
                carries,
                inputs.broadcast,
                place(jax.tree.map(lambda a, t=step: a[:, t], data)),
                None if source_rows is None else place(source_rows[:, step]),
                inputs.source,
                rows["algorithm"],
                ids,
                (inputs.seed_and_round, np.int32(step)),
            )
        return carries

    def __call__(self, carry, inputs: RoundInputs, chunk: Chunk, host: HostChunk):
        for members, picked in self._groups(host):
            info = self._placement.clients(self._group_info(chunk, members, picked))
            carries, rows = self._start(carry, inputs.broadcast, info)
            num_steps = int(host.num_steps[members].max(initial=0))
            carries = self._run_steps(carries, inputs, chunk, picked, rows, info, range(num_steps))
            carry = self._finish(carry, inputs, carries, rows, info)
        return carry

    def seconds_per_client_step(
        self, carry, inputs: RoundInputs, chunk: Chunk, host: HostChunk, steps: int = 3
    ) -> float:
        members, picked = next(self._groups(host))
        info = self._placement.clients(self._group_info(chunk, members, picked))
        available = int(chunk.data.mask.shape[1])

        def time_steps(count: int) -> float:
            carries, rows = jax.block_until_ready(self._start(carry, inputs.broadcast, info))
            # Steps past the chunk's end wrap around: timing needs work, not meaning.
            wrapped = [step % available for step in range(count)]
            begin = time.perf_counter()
            carries = self._run_steps(carries, inputs, chunk, picked, rows, info, wrapped)
            jax.block_until_ready(carries)
            return time.perf_counter() - begin

        time_steps(2)  # compiles and warms up
        return time_steps(steps) / (steps * len(members))
