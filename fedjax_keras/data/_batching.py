"""Batching: a cohort of clients -> static-shape padded chunks [clients, steps, batch, ...].

A jit-compiled, vmapped engine needs every chunk of clients as arrays of one
static shape. `plan_cohort` decides, with vectorised integer arithmetic only,
where each of the cohort's examples goes; `CohortPlan.chunks()` then builds one
chunk at a time with a single gather per leaf, so host memory is bounded by the
chunk size, not by the cohort.

Semantics (one client, n examples, batch size B, E epochs):
  * every epoch is a fresh permutation of the client's examples (or the original
    order when ``shuffle=False``), cut into ceil(n / B) batches; the partial last
    batch is kept and masked, never dropped, and batches never cross epochs.
    With ``shuffle=False`` this is the batch order of Keras
    ``fit(batch_size=B, epochs=E, shuffle=False)``.
  * the client has E * ceil(n / B) real steps, laid out first; the rest of the
    chunk's steps are all masked.
  * the permutation of (client, epoch) is a pure function of (seed, the client's
    position in the cohort, epoch, n): a counter-based hash, so it does not depend
    on chunk_size, step_buckets, or the other clients.

Chunks: clients are sorted by step count (descending, stable) and cut into
chunks of exactly chunk_size clients, the last one padded with dummy clients
(all masked, position -1). A chunk's step count is its largest client's, rounded
up by ``step_buckets`` (and at least 1), so that few distinct shapes compile.
Padded slots are zero-filled, never copies of other rows: a NaN there would
poison a masked sum.

Batch width: when every client of the cohort has fewer than B examples, each
client has one batch per epoch and a width of B would be mostly padding
(batch_size=1000 on clients of 10 examples: 99%). The arrays are then only as
wide as the largest client, rounded up to a power of two so that few widths
compile (``padded_batch_size``). Every client still gets exactly the same
batches; the losses and metrics are masked means, so training is unchanged.

One job: `plan_cohort` and the `CohortPlan` it returns share one layout of
slots (the segment arithmetic and the seeded shuffle it is built with); split,
each half would have to restate the other's layout.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np
from jax import tree_util

from fedjax_keras._numbers import is_integer

from ._buckets import bucket
from ._federated_data import FederatedData

# splitmix64 (Steele et al. 2014): the increment of its counter stream.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
# A shuffle sorts one uint64 per example: (segment start | random draw | index in
# the segment), with a draw of this many bits (ties, ~n**2 / 2**33 per client of
# n examples, keep their original order).
_DRAW_BITS = 32
# Bits left for (segment start | index in the segment); beyond them, lexsort.
_PACKED_BITS = 64 - _DRAW_BITS
# A chunk at least this real (real slots / all slots) is built by one gather over
# all its slots then zeroing the padding; a sparser one by zero-fill and scatter
# (on the 2-core benchmark host the two tie at about 35% real slots).
_GATHER_ALL_SLOTS = 0.4


class ClientBatches(NamedTuple):
    """One chunk of clients' padded batches (host numpy arrays).

    Attributes:
      x: pytree like the cohort's ``x``, leaves [clients, steps, batch, ...].
      y: pytree like the cohort's ``y``, leaves [clients, steps, batch, ...].
      mask: bool [clients, steps, batch]; False marks padding (zero-filled).
      client_positions: int32 [clients]; position in the cohort, -1 for a dummy client.
      num_examples: int32 [clients]; the client's examples (one epoch), 0 for dummies.
      num_steps: int32 [clients]; real (non-empty) steps of the client.
    """

    x: Any
    y: Any
    mask: np.ndarray
    client_positions: np.ndarray
    num_examples: np.ndarray
    num_steps: np.ndarray


class ChunkRows(NamedTuple):
    """One chunk as indices into the cohort's source arrays (for gathering on a device).

    Attributes:
      rows: int32 [clients, steps, batch]; the source row of every slot, 0 for padding.
      mask: bool [clients, steps, batch]; False marks padding.
      client_positions: int32 [clients]; position in the cohort, -1 for a dummy client.
      num_examples: int32 [clients].
      num_steps: int32 [clients].
    """

    rows: np.ndarray
    mask: np.ndarray
    client_positions: np.ndarray
    num_examples: np.ndarray
    num_steps: np.ndarray


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class CohortPlan:
    """Where every example of a cohort goes; built by `plan_cohort`.

    Holds integer index arrays only (plus a reference to the cohort's arrays);
    `chunks()` materialises the padded arrays lazily, one chunk at a time.

    Attributes:
      batch_size: B, examples per step.
      padded_batch_size: the width of the chunks' batch axis: B, or less when every
        client has fewer than B examples (see the module docstring).
      epochs: E.
      chunk_size: clients per chunk K (the cohort size when planned with None).
      order: int64 [C]; cohort positions in chunk order (steps descending).
      chunk_steps: int64 [num_chunks]; the (bucketed) step count S of each chunk.
      client_num_examples: int64 [C]; examples per client, cohort order.
      client_num_steps: int64 [C]; real steps per client, E * ceil(n / B), cohort order.
    """

    batch_size: int
    padded_batch_size: int
    epochs: int
    chunk_size: int
    order: np.ndarray
    chunk_steps: np.ndarray
    client_num_examples: np.ndarray
    client_num_steps: np.ndarray
    _examples: dict
    _rows: np.ndarray  # int64 [E * N]: source row of each real slot, chunk after chunk.
    _slots: np.ndarray  # int64 [E * N]: that slot's flat index over all chunks.
    _bounds: np.ndarray  # int64 [num_chunks + 1]: each chunk's range in _rows / _slots.
    _slot_bounds: np.ndarray  # int64 [num_chunks + 1]: each chunk's range of slots.
    _index_of_slot: np.ndarray  # int64 [all slots]: source row of every slot, 0 for padding.
    _mask: np.ndarray  # bool [all slots]: False for padding.
    _per_client: np.ndarray  # int32 [3, num_chunks, K]: positions, examples, steps.

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_steps)

    @property
    def chunk_shapes(self) -> list[tuple[int, int, int]]:
        """(clients, steps, batch) of every chunk."""
        return [(self.chunk_size, int(s), self.padded_batch_size) for s in self.chunk_steps]

    @property
    def slot_positions(self) -> np.ndarray:
        """int32 [num_chunks * chunk_size]: the cohort position of every client slot
        (chunk ``j``, index ``i`` is slot ``j * chunk_size + i``), -1 for padding."""
        return self._per_client[0].reshape(-1)

    @property
    def num_examples(self) -> int:
        """Real examples of the cohort, counted once (one epoch)."""
        return int(self.client_num_examples.sum())

    @property
    def padding_fraction(self) -> float:
        """Padded example slots / all slots, dummy clients included."""
        slots = int(self.chunk_steps.sum()) * self.chunk_size * self.padded_batch_size
        return 1.0 - self.epochs * self.num_examples / slots

    def __repr__(self) -> str:
        return (
            f"CohortPlan(clients={len(self.order)}, num_examples={self.num_examples}, "
            f"chunk_shapes={self.chunk_shapes}, padding_fraction={self.padding_fraction:.3f})"
        )

    def chunks(self) -> Iterator[ClientBatches]:
        """Yields every chunk's `ClientBatches`, one at a time."""
        for index in range(self.num_chunks):
            yield self.chunk(index)

    @property
    def source(self) -> dict:
        """The arrays `chunk_rows` indexes (the cohort's `FederatedData.source_rows`)."""
        return self._examples

    def chunk_rows(self, index: int) -> ChunkRows:
        """Chunk ``index`` as row indices into `source`, without gathering any example."""
        j = operator.index(index)
        shape = (self.chunk_size, int(self.chunk_steps[j]), self.padded_batch_size)
        s0, s1 = self._slot_bounds[j], self._slot_bounds[j + 1]
        positions, num_examples, num_steps = self._per_client[:, j]
        return ChunkRows(
            self._index_of_slot[s0:s1].astype(np.int32).reshape(shape),
            self._mask[s0:s1].reshape(shape),
            positions,
            num_examples,
            num_steps,
        )

    def chunk(self, index: int) -> ClientBatches:
        """Materialises chunk ``index``: arrays [chunk_size, chunk_steps[index], batch, ...]."""
        j = operator.index(index)
        if not 0 <= j < self.num_chunks:
            raise IndexError(f"index must be in [0, {self.num_chunks}), got {index!r}.")
        shape = (self.chunk_size, int(self.chunk_steps[j]), self.padded_batch_size)
        s0, s1 = self._slot_bounds[j], self._slot_bounds[j + 1]
        mask = self._mask[s0:s1].copy()
        e0, e1 = self._bounds[j], self._bounds[j + 1]
        if (e1 - e0) >= _GATHER_ALL_SLOTS * (s1 - s0):
            # Mostly real: one gather over every slot (padding reads row 0), then
            # zero the padding rows.
            index_of_slot = self._index_of_slot[s0:s1]
            padding = np.flatnonzero(~mask)

            def gather(leaf: np.ndarray) -> np.ndarray:
                out = np.take(leaf, index_of_slot, axis=0, mode="clip")
                out[padding] = 0
                return out.reshape(shape + leaf.shape[1:])
        else:
            # Mostly padding: zero-fill (a memset) and scatter the real rows.
            rows, slots = self._rows[e0:e1], self._slots[e0:e1] - s0

            def gather(leaf: np.ndarray) -> np.ndarray:
                out = np.zeros((s1 - s0,) + leaf.shape[1:], leaf.dtype)
                out[slots] = np.take(leaf, rows, axis=0)
                return out.reshape(shape + leaf.shape[1:])

        positions, num_examples, num_steps = self._per_client[:, j]
        return ClientBatches(
            x=tree_util.tree_map(gather, self._examples["x"]),
            y=tree_util.tree_map(gather, self._examples["y"]),
            mask=mask.reshape(shape),
            client_positions=positions,
            num_examples=num_examples,
            num_steps=num_steps,
        )


def plan_cohort(
    cohort: FederatedData,
    *,
    batch_size: int,
    epochs: int = 1,
    shuffle: bool = True,
    seed: int | None = None,
    chunk_size: int | None = None,
    step_buckets: str | Sequence[int] = "pow2",
    cap_batch: bool = True,
) -> CohortPlan:
    """Plans a cohort's padded, bucketed batches (see the module docstring).

    Args:
      cohort: the round's clients, e.g. ``data.sample_clients(100, seed=round)``.
      batch_size: B >= 1.
      epochs: local epochs E >= 1.
      shuffle: shuffle each client's examples afresh every epoch.
      seed: integer in [0, 2**64) (required when shuffle is True).
      chunk_size: clients per chunk K >= 1; None puts the whole cohort in one chunk.
      step_buckets: how a chunk's step count is rounded up: "pow2" (next power
        of two), "geometric" (next of 1, 2, 3, 4, 6, 8, 12, 16, ...: powers of two
        and three times powers of two), "exact", or an increasing sequence of
        allowed step counts.
      cap_batch: when every client has fewer than ``batch_size`` examples, pad
        batches only to the largest client's size rounded up to a power of two
        (the same batches, far less padding); False always pads to ``batch_size``.

    Returns:
      A `CohortPlan`; iterate ``plan.chunks()`` for the `ClientBatches`.

    Raises:
      TypeError: if cohort is not a FederatedData.
      ValueError: on a bad argument, an empty cohort, or a client needing more
        steps than the largest explicit step bucket.

    Example:
      >>> import numpy as np
      >>> data = FederatedData.from_arrays(np.ones((7, 2)), np.zeros(7), [0, 5, 5, 7])
      >>> plan = plan_cohort(data, batch_size=2, seed=0, chunk_size=2)
      >>> plan.order.tolist(), plan.chunk_shapes
      ([0, 2, 1], [(2, 4, 2), (2, 1, 2)])
      >>> [c.mask.sum(axis=(1, 2)).tolist() for c in plan.chunks()]
      [[5, 2], [0, 0]]
    """
    _check_args(cohort, batch_size, epochs, shuffle, seed, chunk_size)
    b, e, c = batch_size, epochs, cohort.num_clients
    k = c if chunk_size is None else chunk_size
    sizes = cohort.client_sizes
    steps_per_epoch = -(-sizes // b)
    # Slots per step. Narrower than b only when every client fits in one batch,
    # so the layout below (step t of a segment at slots [t * width, (t+1) * width))
    # never splits a batch.
    width = min(b, bucket(max(int(sizes.max()), 1), "pow2")) if cap_batch else b
    steps = e * steps_per_epoch
    order = np.argsort(-steps, kind="stable")
    num_chunks = -(-c // k)
    chunk_steps = bucket(np.maximum(steps[order[::k]], 1), step_buckets)

    per_client = np.zeros((3, num_chunks * k), np.int32)
    per_client[0] = -1
    per_client[:, :c] = order, sizes[order], steps[order]
    per_client = per_client.reshape(3, num_chunks, k)
    per_client.flags.writeable = False  # chunks hand out views of it

    # Segments: one per (client in chunk order, epoch), laid out client-major.
    # Segment-level bases are computed first, then spread to elements by np.repeat.
    slot_bounds = np.zeros(num_chunks + 1, np.int64)
    np.cumsum(k * width * chunk_steps, out=slot_bounds[1:])
    slot_base = slot_bounds[:-1, None] + np.arange(k) * (chunk_steps * width)[:, None]
    slot_base = slot_base.reshape(-1)[:c]
    source, starts = cohort.source_rows
    row_base = starts[order]
    seg_len = sizes[order]
    if e > 1:
        epoch_slots = np.arange(e) * (steps_per_epoch[order] * width)[:, None]
        slot_base = (slot_base[:, None] + epoch_slots).reshape(-1)
        row_base, seg_len = np.repeat(row_base, e), np.repeat(seg_len, e)
    seg_start = np.zeros(len(seg_len) + 1, np.int64)
    np.cumsum(seg_len, out=seg_start[1:])
    seg_start_of = np.repeat(seg_start[:-1], seg_len)
    t = np.arange(seg_start[-1], dtype=np.int64)  # index of each element in its segment
    t -= seg_start_of
    slots = t + np.repeat(slot_base, seg_len)
    if shuffle and t.size:
        seg_keys = _segment_keys(seed, order.astype(np.uint64), e)
        t = _shuffle_segments(t, seg_start_of, seg_len, seg_keys, int(sizes.max()))
    rows = t
    rows += np.repeat(row_base, seg_len)
    bounds = seg_start[::e][np.minimum(np.arange(num_chunks + 1) * k, c)]
    index_of_slot = np.zeros(slot_bounds[-1], np.int64)
    index_of_slot[slots] = rows
    mask = np.zeros(slot_bounds[-1], bool)
    mask[slots] = True
    return CohortPlan(
        batch_size=b,
        padded_batch_size=width,
        epochs=e,
        chunk_size=k,
        order=order,
        chunk_steps=chunk_steps,
        client_num_examples=sizes,
        client_num_steps=steps,
        _examples=source,
        _rows=rows,
        _slots=slots,
        _bounds=bounds,
        _slot_bounds=slot_bounds,
        _index_of_slot=index_of_slot,
        _mask=mask,
        _per_client=per_client,
    )


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser, in place on a uint64 array (a bijection that scrambles bits)."""
    z ^= z >> np.uint64(30)
    z *= _MIX_1
    z ^= z >> np.uint64(27)
    z *= _MIX_2
    z ^= z >> np.uint64(31)
    return z


def _segment_keys(seed: int, positions: np.ndarray, epochs: int) -> np.ndarray:
    """uint64 [positions * epochs] keys, one per (seed, cohort position, epoch), position-major.

    Each key seeds one splitmix64 stream (the draws of that client in that epoch).
    """
    counters = (positions[:, None] << np.uint64(32)) + np.arange(epochs, dtype=np.uint64)
    counters ^= _mix64(np.array([seed], np.uint64) + _GOLDEN)
    return _mix64(counters.reshape(-1))


def _shuffle_segments(
    t: np.ndarray,
    seg_start_of: np.ndarray,
    seg_len: np.ndarray,
    seg_keys: np.ndarray,
    max_len: int,
) -> np.ndarray:
    """Permutes ``t`` (0..len-1 within each contiguous segment) randomly per segment.

    Element t of segment s draws the top 32 bits of ``mix64(seg_keys[s] + t * golden)``;
    sorting by (segment, draw, t) gives the permutation, so it depends on the
    segment's key and length only. One sort over the whole cohort: the segment's
    start sits in the top bits of a uint64, the draw in the middle, and t in the
    low bits (to read the permutation back and to break ties). A cohort too big
    for 64 bits takes an equivalent, slower lexsort.
    """
    t_u = t.view(np.uint64)  # t >= 0
    draws = np.repeat(seg_keys, seg_len)
    draws += t_u * _GOLDEN
    _mix64(draws)
    draws >>= np.uint64(64 - _DRAW_BITS)
    start_bits = max(1, int(seg_start_of[-1]).bit_length())
    index_bits = max(1, (max_len - 1).bit_length())
    if start_bits + index_bits > _PACKED_BITS:
        return t[np.lexsort((t, draws, seg_start_of))]
    draws <<= np.uint64(index_bits)
    draws |= seg_start_of.view(np.uint64) << np.uint64(64 - start_bits)
    draws |= t_u
    draws.sort()
    draws &= np.uint64((1 << index_bits) - 1)
    return draws.view(np.int64)


def _check_args(cohort, batch_size, epochs, shuffle, seed, chunk_size) -> None:
    if not isinstance(cohort, FederatedData):
        raise TypeError(
            f"cohort must be a FederatedData (e.g. data.sample_clients(...)), got "
            f"{type(cohort).__name__}."
        )
    if cohort.num_clients == 0:
        raise ValueError("cohort has no clients; sample at least one client.")
    for name, value in (("batch_size", batch_size), ("epochs", epochs)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if chunk_size is not None and (not _is_int(chunk_size) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None or a positive integer, got {chunk_size!r}.")
    if shuffle and seed is None:
        raise ValueError(
            "seed is None but shuffle=True; pass seed=<int> (e.g. the round number) so that "
            "batches are reproducible, or shuffle=False."
        )
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2**64):
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}.")


def _is_int(value) -> bool:
    return is_integer(value)
