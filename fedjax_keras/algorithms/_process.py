"""The round loop shared by the FedAvg family: batch, run chunks, aggregate, update.

One round of a `FederatedProcess`:

1. the cohort is batched on the host into static-shape chunks
   ``[clients, steps, batch, ...]`` (clients sorted by step count, steps
   rounded up to a few buckets, the partial last batch masked);
2. each chunk is put on the device at once and run by a `ChunkRunner`
   (vmapped, unrolled, or one client per call), its outputs added to running
   sums on the device;
3. one compiled server step turns the sums into the new server state and the
   round's metrics.

Everything compiled is cached per chunk shape, so a run compiles a handful of
programs in its first rounds and none after.
"""

import dataclasses
import zlib
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.aggregation import Accumulator, init_accumulator
from fedjax_keras.client import (
    Chunk,
    ChunkRunner,
    ClientBatchArrays,
    ClientProgram,
    ClientStateStore,
)
from fedjax_keras.client._runners import _chunk_data, choose_mode
from fedjax_keras.data import FederatedData, plan_cohort
from fedjax_keras.data._batching import _round_steps
from fedjax_keras.models import Model, ModelWeights

RUNNERS = ("auto", "timed", "vmap", "unroll", "sequential")


@flax.struct.dataclass
class ServerState:
    """The state of a federated process between rounds (a pytree).

    Attributes:
      model: the server's `ModelWeights`.
      optimizer_state: the server optimizer's state.
      round_num: int64 scalar, rounds completed.
      seed: int64 scalar, the seed given to ``initialize``; with ``round_num``
        it determines every random choice of the next round.
      extra: the algorithm's own server state (SCAFFOLD's control variate), or ``()``.
      client_states: the `ClientStateStore` of per-client state, or None.
    """

    model: ModelWeights
    optimizer_state: Any
    round_num: Any
    seed: Any
    extra: Any = ()
    client_states: Any = flax.struct.field(pytree_node=False, default=None)


class RoundOutput(NamedTuple):
    """What ``process.next`` returns (TFF's ``LearningProcessOutput``).

    Attributes:
      state: the new `ServerState`.
      metrics: dict of Python floats / ints (NumPy arrays for vector metrics).
    """

    state: ServerState
    metrics: dict


class Broadcast(NamedTuple):
    """What the server sends every client of a round."""

    model: ModelWeights
    extra: Any


@dataclasses.dataclass(frozen=True)
class AlgorithmSpec:
    """The parts in which the algorithms of the family differ.

    Attributes:
      name: for messages.
      program: the clients' `ClientProgram` (start / step / finish).
      server_fn: ``(state, acc, population) -> (model, optimizer_state, extra)``, pure.
      init_optimizer_state: ``(trainable) -> server optimizer state``.
      init_extra: ``(weights) -> extra server state``.
      client_state_default: ``(weights) -> one client's default persistent
        state``, or None when the algorithm keeps none.
    """

    name: str
    program: ClientProgram
    server_fn: Callable[..., tuple]
    init_optimizer_state: Callable[[Any], Any]
    init_extra: Callable[[ModelWeights], Any] = lambda weights: ()
    client_state_default: Callable[[ModelWeights], Any] | None = None


def as_cohort(cohort) -> FederatedData:
    """Accepts a `FederatedData` or a list of per-client dicts / (x, y) tuples."""
    if isinstance(cohort, FederatedData):
        return cohort
    if isinstance(cohort, (list, tuple)):
        return FederatedData.from_client_list(list(cohort))
    raise TypeError(
        "A cohort must be a FederatedData (e.g. data.sample_clients(...)) or a list of "
        f"per-client {{'x': ..., 'y': ...}} dicts or (x, y) tuples; received "
        f"{type(cohort).__name__}."
    )


def require_model(model) -> None:
    """Raises a TypeError with the fix unless ``model`` came from `from_keras_model`."""
    if not isinstance(model, Model):
        raise TypeError(
            "The algorithm builders take the Model returned by fedjax_keras.from_keras_model; "
            f"received {type(model).__name__}. Wrap the Keras model first: "
            "model = fedjax_keras.from_keras_model(keras_model, dummy_batch, loss=...). "
            "(A TFF-style model_fn is not needed: call it and wrap its result once.)"
        )


def _is_positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1


def _check_engine_options(
    shuffle, step_buckets, device_data_limit, client_state_placement, population_size
) -> None:
    """Rejects engine options at build time, naming the option and what it accepts."""
    if not isinstance(shuffle, bool):
        raise TypeError(f"shuffle must be True or False; received {shuffle!r}.")
    try:
        _round_steps(np.array([1]), step_buckets)
    except (ValueError, TypeError) as e:
        raise ValueError(str(e)) from e
    if device_data_limit is not None and not (
        isinstance(device_data_limit, (int, np.integer)) and device_data_limit >= 0
    ):
        raise TypeError(
            f"device_data_limit must be a number of bytes (int >= 0) or None; "
            f"received {device_data_limit!r}."
        )
    if client_state_placement not in ("device", "host"):
        raise ValueError(
            f"client_state_placement must be 'device' or 'host'; received "
            f"{client_state_placement!r}."
        )
    if population_size is not None and not _is_positive_int(population_size):
        raise ValueError(f"population_size must be a positive int; received {population_size!r}.")


def client_key_ids(client_ids) -> np.ndarray:
    """int32 [clients]: integer ids (crc32 of ``str(id)`` for non-integers) for key folding."""
    try:
        ids = np.asarray(client_ids)
        if ids.dtype.kind in "iu":
            return (ids.astype(np.int64) % (2**31 - 1)).astype(np.int32)
    except (TypeError, ValueError):
        pass
    return np.array([zlib.crc32(str(cid).encode()) % (2**31 - 1) for cid in client_ids], np.int32)


def _to_host_metrics(metrics: dict) -> dict:
    result = {}
    for name, value in jax.device_get(metrics).items():
        array = np.asarray(value)
        if array.ndim == 0:
            result[name] = int(array) if array.dtype.kind in "iub" else float(array)
        else:
            result[name] = array
    return result


class FederatedProcess:
    """A federated training process: ``initialize(seed)`` and ``next(state, cohort)``.

    Built by the `build_*` functions of `fedjax_keras.algorithms`, which pass
    these engine options through (all keyword-only):

    - ``batch_size`` (20): examples per local step.
    - ``epochs`` (1): local epochs per round.
    - ``shuffle`` (True): shuffle each client's data every epoch, seeded by the
      state (``initialize(seed)``) and the round number.
    - ``chunk_size`` ('auto'): clients run together in one compiled call;
      'auto' fixes it at the first round from the cohort size (a sixteenth of
      the cohort, at least 16 and at most 512 on a CPU; at least 512 and at
      most 4096 on accelerators; never more than the cohort); None runs the
      whole cohort at once. Peak
      memory grows with it, not with the cohort.
    - ``step_buckets`` ('geometric'): how a chunk's step count is rounded up
      ('geometric': 1, 2, 3, 4, 6, 8, 12, ...; 'pow2'; 'exact'; or a list).
      Fewer distinct values mean fewer compilations.
    - ``runner`` ('auto'): 'auto' uses 'vmap', except for convolutions on a
      CPU, where it times 'sequential' and 'unroll' on the first chunk of the
      first round and keeps the cheaper per client-step; 'timed' always times
      the candidates ('vmap' and 'sequential' without convolutions on a CPU);
      or force 'vmap', 'unroll' or 'sequential'. All give the same numbers
      (see `fedjax_keras.client.ChunkRunner`); `runner_timings` holds what was
      measured.
    - ``group_size`` (2): clients per compiled step in the 'unroll' runner.
    - ``data_placement`` ('auto'): 'device' keeps the population's arrays on
      the device and moves only row indices per chunk; 'host' batches on the
      host; 'auto' uses the device when the arrays are at most
      ``device_data_limit`` bytes (256 MiB on a CPU, 4 GiB on accelerators).
    - ``client_state_placement`` ('device'): where per-client state lives.
    - ``population_size``: the population size some algorithms need (SCAFFOLD).
    """

    def __init__(
        self,
        model: Model,
        spec: AlgorithmSpec,
        *,
        batch_size: int = 20,
        epochs: int = 1,
        shuffle: bool = True,
        chunk_size: int | str | None = "auto",
        step_buckets="geometric",
        runner: str = "auto",
        group_size: int = 2,
        data_placement: str = "auto",
        device_data_limit: int | None = None,
        client_state_placement: str = "device",
        population_size: int | None = None,
    ):
        require_model(model)
        _check_engine_options(
            shuffle, step_buckets, device_data_limit, client_state_placement, population_size
        )
        if runner not in RUNNERS:
            raise ValueError(f"runner must be one of {RUNNERS}; received {runner!r}.")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; received {batch_size!r}.")
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be a positive int; received {epochs!r}.")
        if (
            chunk_size is not None
            and chunk_size != "auto"
            and (not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1)
        ):
            raise ValueError(
                f"chunk_size must be a positive int, 'auto' or None; received {chunk_size!r}."
            )
        self.model = model
        self.spec = spec
        self.batch_size = batch_size
        self.epochs = epochs
        self.shuffle = shuffle
        self.chunk_size = chunk_size
        self.step_buckets = step_buckets
        self.runner = runner
        self.client_state_placement = client_state_placement
        self.population_size = population_size
        if not _is_positive_int(group_size):
            raise ValueError(f"group_size must be a positive int; received {group_size!r}.")
        self.group_size = group_size
        if data_placement not in ("auto", "device", "host"):
            raise ValueError(
                f"data_placement must be 'auto', 'device' or 'host'; received {data_placement!r}."
            )
        self.data_placement = data_placement
        # On a CPU the "device" copy is a second copy in host memory: keep it small.
        default_limit = 256 * 2**20 if jax.default_backend() == "cpu" else 4 * 2**30
        self.device_data_limit = default_limit if device_data_limit is None else device_data_limit
        self._source_cache = None
        self._fitting_signatures: set = set()
        self._runners: dict[str, ChunkRunner] = {}
        self.runner_timings: dict[str, float] = {}
        self.mode: str | None = None if runner in ("auto", "timed") else runner
        self._server_step = jax.jit(self._server_step_impl)
        self._zero_acc = None

    # ------------------------------------------------------------------ state
    def initialize(self, seed: int = 0) -> ServerState:
        """The initial server state: the model's initial weights, fresh optimizer state.

        Args:
          seed: determines every random choice of the run (shuffling, Dropout);
            an integer in [0, 2**32).

        Raises:
          ValueError: for a seed out of that range (the round's shuffle seed
            is ``seed * 2**32 + round_num``).
        """
        if (
            not isinstance(seed, (int, np.integer))
            or isinstance(seed, bool)
            or not 0 <= seed < 2**32
        ):
            raise ValueError(f"seed must be an integer in [0, 2**32); received {seed!r}.")
        weights = self.model.initial_weights
        default = self.spec.client_state_default
        store = None
        if default is not None:
            store = ClientStateStore(default(weights), self.client_state_placement)
        return ServerState(
            model=weights,
            optimizer_state=self.spec.init_optimizer_state(weights.trainable),
            round_num=np.int64(0),
            seed=np.int64(seed),
            extra=self.spec.init_extra(weights),
            client_states=store,
        )

    def get_model_weights(self, state: ServerState) -> ModelWeights:
        """The server model's weights."""
        return state.model

    def set_model_weights(self, state: ServerState, weights: ModelWeights) -> ServerState:
        """A state whose server model holds ``weights`` (e.g. pre-trained ones).

        Clients not seen yet start from the default state derived from
        ``weights`` (with ``non_trainable='per_client'``, the new statistics);
        stored client states are kept.

        Raises:
          ValueError: when the weights' structure or shapes differ from the model's.
        """
        expected = jax.tree.map(np.shape, state.model)
        received = jax.tree.map(np.shape, weights)
        if jax.tree.structure(expected) != jax.tree.structure(received) or expected != received:
            raise ValueError(
                "set_model_weights: the weights do not match the model; expected paths and "
                f"shapes {expected}, received {received}."
            )
        weights = jax.tree.map(jnp.asarray, weights)
        store = state.client_states
        if store is not None:
            store = store.with_default(self.spec.client_state_default(weights))
        return state.replace(model=weights, client_states=store)

    # ------------------------------------------------------------------ round
    def _runner_for(self, mode: str) -> ChunkRunner:
        if mode not in self._runners:
            self._runners[mode] = ChunkRunner(
                self.spec.program, self.model.merge_metrics, mode, self.group_size
            )
        return self._runners[mode]

    def _check_cohort_fits(self, cohort: FederatedData) -> None:
        """Raises one clear ValueError when the cohort's examples do not fit the model.

        Traces the model's loss on one example of the cohort's shapes (abstractly,
        nothing runs), once per distinct signature, before anything is compiled:
        variable lengths the model accepts pass, what it rejects is named.
        """
        source, _ = cohort.source_rows
        leaves, treedef = jax.tree.flatten(source)
        signature = (treedef, tuple((np.shape(a)[1:], np.asarray(a).dtype) for a in leaves))
        if signature in self._fitting_signatures:
            return
        one = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1,) + np.shape(a)[1:], a.dtype), source)
        try:
            jax.eval_shape(
                lambda w, b: self.model.loss(w, b, training=False), self.model.initial_weights, one
            )
        except Exception as e:  # noqa: BLE001 - any failure means the data does not fit.
            shapes = jax.tree.map(lambda a: (tuple(np.shape(a)[1:]), str(a.dtype)), source)
            expected = jax.tree.map(
                lambda s: (tuple(s.shape[1:]), str(s.dtype)), self.model.input_spec
            )
            raise ValueError(
                f"The cohort's examples (per-example shape, dtype: {shapes}) do not fit the model "
                f"(wrapped with {expected}): {type(e).__name__}: {e}"
            ) from e
        self._fitting_signatures.add(signature)

    def _resolve_chunk_size(self, cohort_size: int) -> int | None:
        if self.chunk_size == "auto":
            # Clients are sorted by step count before chunking, so a chunk wastes
            # little on padding; a sixteenth of the cohort keeps the per-call cost
            # amortised for large cohorts. On a CPU larger vmapped chunks gain
            # nothing; accelerators want many clients per call to fill the device.
            low, high = (16, 512) if jax.default_backend() == "cpu" else (512, 4096)
            # Never more than the cohort: padding clients cost as much as real ones in a vmap.
            self.chunk_size = int(min(max(cohort_size // 16, low), high, max(cohort_size, 1)))
        return self.chunk_size

    def _device_source(self, source: dict):
        """The cohort's source arrays on the device, or None to batch on the host.

        Keeping the population on the device (transferred once, then reused for
        every cohort sampled from it) means a round moves only row indices;
        sources larger than `device_data_limit` bytes are batched on the host.
        """
        leaves = jax.tree.leaves(source)
        key = tuple((id(leaf), leaf.shape) for leaf in leaves)
        if self._source_cache is not None and self._source_cache[0] == key:
            return self._source_cache[1]
        size = sum(leaf.nbytes for leaf in leaves)
        if self.data_placement == "host" or (
            self.data_placement == "auto" and size > self.device_data_limit
        ):
            return None
        on_device = jax.device_put(source)
        # Keep the host arrays referenced too, so `id` stays unique while cached.
        self._source_cache = (key, on_device, source)
        return on_device

    def _accumulator(self, broadcast, chunk: Chunk, source) -> Accumulator:
        if self._zero_acc is None:
            data = _chunk_data(chunk, source)
            one = jax.tree.map(lambda a: a[0], (data, chunk.client_state))
            example = jax.eval_shape(
                self.spec.program.run, broadcast, one[0], jax.random.PRNGKey(0), one[1]
            )
            self._zero_acc = init_accumulator(
                jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example)
            )
        return self._zero_acc

    def next(self, state: ServerState, cohort) -> RoundOutput:
        """Runs one round on ``cohort`` and returns the new state and the round's metrics.

        Args:
          state: from `initialize` or a previous `next`.
          cohort: the round's clients: a `FederatedData` (e.g.
            ``data.sample_clients(20, seed=r)``) or a list of per-client
            ``{'x': ..., 'y': ...}`` dicts or ``(x, y)`` tuples.

        Returns:
          `RoundOutput` with metrics ``loss`` (example-weighted mean training
          loss), the model's metrics, ``num_examples``, ``num_clients`` (clients
          aggregated), ``num_dropped_clients`` (non-finite updates, left out),
          ``padding_fraction`` and ``runner``.
        """
        if state.client_states is not None and not isinstance(cohort, FederatedData):
            raise TypeError(
                f"{self.spec.name} keeps state per client, so a cohort must carry stable client "
                "ids: pass a FederatedData sampled from the population (e.g. "
                "data.sample_clients(...)), not a list of client datasets."
            )
        cohort = as_cohort(cohort)
        if cohort.num_clients:
            self._check_cohort_fits(cohort)
        round_num = int(state.round_num)
        seed = int(state.seed)
        plan = plan_cohort(
            cohort,
            batch_size=self.batch_size,
            epochs=self.epochs,
            shuffle=self.shuffle,
            seed=seed * 2**32 + round_num,
            chunk_size=self._resolve_chunk_size(cohort.num_clients),
            step_buckets=self.step_buckets,
        )
        seed_and_round = np.array([seed % 2**32, round_num % 2**32], np.uint32)
        broadcast = Broadcast(state.model, state.extra)
        # Population ids are plain (vectorised) even when repeats are renamed; the
        # cohort position folded into each key keeps repeated draws distinct.
        key_ids = client_key_ids(cohort.population_ids)
        # Per-client state is keyed by population id: a client drawn twice in a
        # round (sampling with replacement) reads its own row twice, last write wins.
        ids = cohort.population_ids
        store = state.client_states
        source = self._device_source(plan.source)
        acc = None
        updated_ids, updated_rows = [], []
        for index in range(plan.num_chunks):
            if source is None:
                batches = plan.chunk(index)
                data, rows = ClientBatchArrays(batches.x, batches.y, batches.mask), None
            else:
                batches = plan.chunk_rows(index)
                data, rows = ClientBatchArrays(None, None, batches.mask), batches.rows
            positions = np.asarray(batches.client_positions)
            valid = positions >= 0
            client_state = ()
            if store is not None:
                chunk_ids = [ids[p] for p in positions[valid]]
                client_state = _pad_rows(store.gather(chunk_ids), valid)
            chunk = Chunk(
                data,
                rows,
                positions.astype(np.int32),
                np.where(valid, key_ids[np.maximum(positions, 0)], 0).astype(np.int32),
                valid,
                client_state,
            )
            if acc is None:
                acc = self._accumulator(broadcast, chunk, source)
            args = (
                acc,
                broadcast,
                chunk,
                source,
                seed_and_round,
                valid,
                np.asarray(batches.num_steps),
            )
            if self.mode is None:
                self.mode, self.runner_timings = self._choose_mode(args)
            acc, new_states = self._runner_for(self.mode)(*args)
            if store is not None:
                # A client sits in one chunk per round, so the rows are written back
                # once, after the last chunk: one copy of the table per round.
                updated_ids.extend(chunk_ids)
                updated_rows.append(jax.tree.map(lambda a, v=valid: a[v], new_states))
        if acc is None:
            raise ValueError("The cohort has no clients; sample at least one client per round.")
        if store is not None and updated_ids:
            rows = jax.tree.map(lambda *parts: jnp.concatenate(parts), *updated_rows)
            store = store.scatter(updated_ids, rows)
        population = self.population_size or (len(store) if store is not None else 0)
        model, opt_state, extra, metrics = self._server_step(
            state.model, state.optimizer_state, state.extra, acc, jnp.float32(max(population, 1))
        )
        new_state = ServerState(
            model=model,
            optimizer_state=opt_state,
            round_num=np.int64(round_num + 1),
            seed=state.seed,
            extra=extra,
            client_states=store,
        )
        host_metrics = _to_host_metrics(metrics)
        host_metrics["padding_fraction"] = float(plan.padding_fraction)
        host_metrics["runner"] = self.mode
        return RoundOutput(new_state, host_metrics)

    def _choose_mode(self, args) -> tuple[str, dict]:
        conv_on_cpu = self.model.has_convolutions and jax.default_backend() == "cpu"
        if self.runner == "auto" and not conv_on_cpu:
            return "vmap", {}
        # A vmapped scan of convolutions on XLA:CPU is tens of times slower (see
        # client/_runners.py), too slow even to probe; time the host-driven modes.
        modes = ("sequential", "unroll") if conv_on_cpu else ("vmap", "sequential")
        return choose_mode({mode: self._runner_for(mode) for mode in modes}, args)

    def _server_step_impl(self, model, optimizer_state, extra, acc: Accumulator, population):
        new_model, new_opt_state, new_extra = self.spec.server_fn(
            model, optimizer_state, extra, acc, population
        )
        metrics = dict(self.model.finalize_metrics(acc.metrics))
        metrics["loss"] = acc.loss_sum / jnp.maximum(acc.num_examples, 1).astype(jnp.float32)
        metrics["num_examples"] = acc.num_examples
        metrics["num_clients"] = acc.num_clients
        metrics["num_dropped_clients"] = acc.num_dropped
        return new_model, new_opt_state, new_extra, metrics


def _pad_rows(rows, valid: np.ndarray):
    """Spreads rows [kept, ...] to [clients, ...], repeating row 0 for padding clients."""
    index = np.cumsum(valid) - 1
    index = np.where(valid, index, 0)
    return jax.tree.map(lambda a: a[index] if len(a) else a, rows)
