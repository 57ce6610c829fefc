"""Three ways to run a chunk of clients, all giving the same numbers.

- ``'vmap'``: one compiled program per chunk: clients batched with `jax.vmap`,
  each client's steps in a `lax.scan`. Best on GPUs/TPUs, and for dense
  models everywhere.
- ``'unroll'``: the host loops over steps; each step is one compiled call in
  which a group of clients (``group_size``, default 2) is written out one after
  another, not vmapped. XLA:CPU then runs plain convolutions (a vmapped
  convolution gradient lowers to a grouped convolution, about 4x slower) and
  can overlap the group's independent clients on its cores.
- ``'sequential'``: as ``'unroll'`` with one client per call.

The host-driven modes skip padding clients and a group's padded trailing steps.
`choose_mode` picks a mode by timing the first chunk when asked to.
"""

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.aggregation import Accumulator, accumulate
from fedjax_keras.client._local_update import ClientBatchArrays, ClientProgram, client_key, step_key

MODES = ("vmap", "unroll", "sequential")


class Chunk(NamedTuple):
    """A chunk of clients on the device; every leaf has a leading [clients] axis.

    Attributes:
      data: `ClientBatchArrays` with leaves [clients, steps, batch, ...]; when
        ``rows`` is given, its ``x`` and ``y`` are None and the examples are
        gathered on the device from the source arrays passed to the runner.
      rows: int32 [clients, steps, batch] source rows of every slot, or None.
      positions: int32 [clients], position in the cohort (-1 for padding clients).
      key_ids: int32 [clients], integer client ids folded into each client's key.
      valid: bool [clients], False for padding clients.
      client_state: the clients' persistent state rows, or ``()``.
    """

    data: ClientBatchArrays
    rows: Any
    positions: jax.Array
    key_ids: jax.Array
    valid: jax.Array
    client_state: Any


def round_key(seed_and_round) -> jax.Array:
    """The key of a round from uint32 [2] ``(seed, round)``, computed inside the programs."""
    base = jax.random.fold_in(jax.random.PRNGKey(0), seed_and_round[0])
    return jax.random.fold_in(base, seed_and_round[1])


def _gather(source, rows, mask):
    """Examples of ``rows`` from the device-resident ``source``; padding slots are zeros."""

    def one(leaf):
        if leaf.shape[0] == 0:
            # A cohort without examples: every slot is padding (jnp.take rejects an empty axis).
            return jnp.zeros(rows.shape + leaf.shape[1:], leaf.dtype)
        taken = jnp.take(leaf, rows, axis=0)
        keep = mask.reshape(mask.shape + (1,) * (taken.ndim - mask.ndim))
        return jnp.where(keep, taken, jnp.zeros((), taken.dtype))

    return jax.tree.map(one, source["x"]), jax.tree.map(one, source["y"])


def _chunk_data(chunk: Chunk, source) -> ClientBatchArrays:
    if chunk.rows is None:
        return chunk.data
    x, y = _gather(source, chunk.rows, chunk.data.mask)
    return ClientBatchArrays(x, y, chunk.data.mask)


def _keep_or_old(keep, new, old):
    """A dropped (non-finite) client keeps its previous persistent state."""

    def pick(n, o):
        return jnp.where(keep.reshape(keep.shape + (1,) * (n.ndim - keep.ndim)), n, o)

    return jax.tree.map(pick, new, old)


def _take(tree, index):
    return jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, index, keepdims=False), tree)


class ChunkRunner:
    """Runs chunks of clients and adds their outputs to an `Accumulator`.

    Calling it returns ``(new_accumulator, new_client_states [clients, ...])``.
    Every compiled piece is cached per chunk shape.
    """

    def __init__(self, program: ClientProgram, merge_metrics, mode: str, group_size: int = 2):
        if mode not in MODES:
            raise ValueError(f"runner mode must be one of {MODES}; received {mode!r}.")
        self.mode = mode
        self.group_size = 1 if mode == "sequential" else group_size
        self._program = program
        self._merge = merge_metrics
        self._vmapped = jax.jit(self._run_vmapped)
        self._start = jax.jit(self._start_group)
        self._step = jax.jit(self._step_group, donate_argnums=(0,))
        self._finish = jax.jit(self._finish_group)

    # ------------------------------------------------------------------ vmap
    def _run_vmapped(self, acc, broadcast, chunk: Chunk, source, seed_and_round):
        keys = jax.vmap(client_key, in_axes=(None, 0, 0))(
            round_key(seed_and_round), chunk.positions, chunk.key_ids
        )
        outputs = jax.vmap(self._program.run, in_axes=(None, 0, 0, 0))(
            broadcast, _chunk_data(chunk, source), keys, chunk.client_state
        )
        acc, keep = accumulate(acc, outputs, chunk.valid, self._merge)
        return acc, _keep_or_old(keep, outputs.client_state, chunk.client_state)

    # ------------------------------------------------------- host-driven steps
    # The group programs see one step's batches, [group, batch, ...], never a
    # chunk's [clients, steps, ...] arrays: they compile once per group size,
    # whatever the chunks' step buckets.
    def _start_group(self, broadcast, client_states):
        return tuple(
            self._program.start(broadcast, _take(client_states, g)) for g in range(self.group_size)
        )

    def _step_group(self, carries, broadcast, batch, rows, source, client_states, key_info, step):
        positions, key_ids, seed_and_round = key_info
        if rows is not None:
            x, y = _gather(source, rows, batch.mask)
            batch = ClientBatchArrays(x, y, batch.mask)
        new = []
        for g, carry in enumerate(carries):
            one = _take(batch, g)
            key = step_key(client_key(round_key(seed_and_round), positions[g], key_ids[g]), step)
            new.append(
                self._program.step(
                    carry,
                    {"x": one.x, "y": one.y, "mask": one.mask},
                    key,
                    broadcast,
                    _take(client_states, g),
                )
            )
        return tuple(new)

    def _finish_group(self, acc, carries, broadcast, client_states, valid):
        outputs = [
            self._program.finish(carry, broadcast, _take(client_states, g))
            for g, carry in enumerate(carries)
        ]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *outputs)
        acc, keep = accumulate(acc, stacked, valid, self._merge)
        return acc, _keep_or_old(keep, stacked.client_state, client_states)

    def _run_stepwise(
        self, acc, broadcast, chunk: Chunk, source, seed_and_round, host_valid, host_steps
    ):
        real = np.flatnonzero(host_valid)
        group_states = []
        for begin in range(0, len(real), self.group_size):
            members = real[begin : begin + self.group_size]
            # A short last group repeats a member as padding; its copy is marked invalid.
            padded = np.concatenate([members, np.full(self.group_size - len(members), members[-1])])
            pick = lambda a, idx=padded: a[idx]  # noqa: E731
            states = jax.tree.map(pick, chunk.client_state)
            key_info = (pick(chunk.positions), pick(chunk.key_ids), seed_and_round)
            data = jax.tree.map(pick, chunk.data)
            rows = None if chunk.rows is None else pick(chunk.rows)
            carries = self._start(broadcast, states)
            for step in range(int(host_steps[members].max(initial=0))):
                at_step = lambda a, t=step: a[:, t]  # noqa: E731
                carries = self._step(
                    carries,
                    broadcast,
                    jax.tree.map(at_step, data),
                    None if rows is None else rows[:, step],
                    source,
                    states,
                    key_info,
                    np.int32(step),
                )
            valid = pick(chunk.valid) & (np.arange(self.group_size) < len(members))
            acc, new_states = self._finish(acc, carries, broadcast, states, valid)
            kept = len(members)
            group_states.append(jax.tree.map(lambda a, n=kept: a[:n], new_states))
        states = jax.tree.map(lambda *a: jnp.concatenate(a), *group_states)
        # Padding clients keep their (unused) rows, so the result is [clients, ...].
        order = np.full(len(host_valid), -1)
        order[real] = np.arange(len(real))
        return acc, jax.tree.map(
            lambda new, old: jnp.where(
                jnp.asarray(order >= 0).reshape((-1,) + (1,) * (new.ndim - 1)),
                new[np.maximum(order, 0)],
                old,
            ),
            states,
            chunk.client_state,
        )

    def __call__(
        self,
        acc: Accumulator,
        broadcast,
        chunk: Chunk,
        source,
        seed_and_round,
        host_valid,
        host_steps,
    ):
        """Runs one chunk.

        Args:
          acc: running sums.
          broadcast: what every client receives (server weights, ...).
          chunk: the chunk on device.
          source: ``{'x', 'y'}`` device arrays that ``chunk.rows`` index, or None.
          seed_and_round: uint32 [2], the run's seed and the round number.
          host_valid: bool [clients] on the host, False for padding clients.
          host_steps: int [clients] on the host, each client's real step count.
        """
        if self.mode == "vmap":
            return self._vmapped(acc, broadcast, chunk, source, seed_and_round)
        return self._run_stepwise(
            acc, broadcast, chunk, source, seed_and_round, host_valid, host_steps
        )


def probe_seconds_per_client_step(runner: ChunkRunner, args: tuple, steps: int = 3) -> float:
    """Seconds one real client-step costs with ``runner`` on a chunk, after compiling.

    'vmap' runs the whole chunk (one program); the host-driven modes time
    ``steps`` steps of the chunk's first group. Nothing is kept: the programs
    are pure, so probing does not change the round.

    Args:
      runner: the `ChunkRunner` to time.
      args: the arguments of one chunk call (see `ChunkRunner.__call__`).
      steps: host-driven steps to time.
    """
    acc, broadcast, chunk, source, seed_and_round, host_valid, host_steps = args
    if runner.mode == "vmap":
        jax.block_until_ready(runner(*args))  # compile
        start = time.perf_counter()
        jax.block_until_ready(runner(*args))
        return (time.perf_counter() - start) / max(int(np.sum(host_steps[host_valid])), 1)
    members = np.flatnonzero(host_valid)[: runner.group_size]
    padded = np.concatenate([members, np.full(runner.group_size - len(members), members[-1])])
    pick = lambda a: a[padded]  # noqa: E731
    states = jax.tree.map(pick, chunk.client_state)
    key_info = (pick(chunk.positions), pick(chunk.key_ids), seed_and_round)
    data = jax.tree.map(pick, chunk.data)
    rows = None if chunk.rows is None else pick(chunk.rows)

    def one_step(carries, step):
        return runner._step(
            carries,
            broadcast,
            jax.tree.map(lambda a: a[:, step], data),
            None if rows is None else rows[:, step],
            source,
            states,
            key_info,
            np.int32(step),
        )

    available = int(chunk.data.mask.shape[1])
    carries = one_step(runner._start(broadcast, states), 0)  # compiles
    carries = jax.block_until_ready(one_step(carries, 1 % available))  # warms up
    start = time.perf_counter()
    for step in range(1, steps + 1):
        carries = one_step(carries, step % available)
    jax.block_until_ready(carries)
    return (time.perf_counter() - start) / (steps * len(members))


def choose_mode(runners: dict[str, ChunkRunner], args: tuple) -> tuple[str, dict[str, float]]:
    """Probes each runner on the same chunk and picks the cheapest per client-step.

    Args:
      runners: mode -> `ChunkRunner`.
      args: the arguments of one chunk call.

    Returns:
      ``(best mode, {mode: seconds per client-step})``.
    """
    timings = {}
    # Two passes, best of each: the first program to run also pays one-off costs
    # (allocations, caches) that would otherwise bias the choice against it.
    for _ in range(2):
        for mode, runner in runners.items():
            seconds = probe_seconds_per_client_step(runner, args)
            timings[mode] = min(seconds, timings.get(mode, seconds))
    return min(timings, key=timings.get), timings
