"""The round loop: any `FederatedAlgorithm`, any executor, any mesh.

One round of a `FederatedProcess`:

1. the cohort is checked (shapes, labels) and planned on the host into
   static-shape chunks ``[clients, steps, batch, ...]`` (clients sorted by
   step count, steps rounded up to a few buckets, the partial last batch
   masked): integer index arrays only;
2. each chunk is run by the executor (`fedjax_keras.parallel`): the clients'
   local work and the absorption of their outputs into the round's carry
   (aggregator, metric sums, client table) happen inside compiled programs,
   sharded over the mesh's devices;
3. one compiled program finalizes the aggregate and applies the algorithm's
   server update, guarded (`fedjax_keras.engine._round`).

Every compiled program is cached per chunk shape, so a run compiles a
handful of programs in its first rounds and none after. The process never
changes its options; what it caches (compiled programs, the population's
device copy, the executor measured once when asked to) does not change a
number.
"""

import warnings
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.client import ClientBatchArrays, ClientTable, round_key
from fedjax_keras.data import FederatedData, completed_steps, padding_warning, plan_cohort
from fedjax_keras.engine._algorithm import FederatedAlgorithm, require_model
from fedjax_keras.engine._options import EngineOptions
from fedjax_keras.engine._round import finish_round, make_chunk_program, start_carry
from fedjax_keras.engine._state import RoundOutput, ServerState
from fedjax_keras.errors import NonFiniteServerUpdateError, PaddingWarning, StateMismatchError
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.parallel import (
    Chunk,
    ChunkInfo,
    HostChunk,
    Placement,
    RoundInputs,
    agree_across_processes,
    choose_fastest,
)

_NO_SLOT = np.iinfo(np.int32).max


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


def client_key_ids(client_ids) -> np.ndarray:
    """int32 [clients]: integer ids (crc32 of ``str(id)`` for non-integers) for key folding."""
    try:
        ids = np.asarray(client_ids)
        if ids.dtype.kind in "iu":
            return (ids.astype(np.int64) % (2**31 - 1)).astype(np.int32)
    except (TypeError, ValueError):
        pass
    return np.array([zlib.crc32(str(cid).encode()) % (2**31 - 1) for cid in client_ids], np.int32)


def _last_occurrence(positions: np.ndarray) -> np.ndarray:
    """bool [n]: True at the last occurrence of each value (sampling with replacement)."""
    last = np.zeros(len(positions), bool)
    _, from_end = np.unique(positions[::-1], return_index=True)
    last[len(positions) - 1 - from_end] = True
    return last


def _to_host_metrics(metrics: dict) -> dict:
    result = {}
    for name, value in jax.device_get(metrics).items():
        array = np.asarray(value)
        if array.ndim == 0:
            result[name] = int(array) if array.dtype.kind in "iub" else float(array)
        else:
            result[name] = array
    return result


def _pad_leading(tree, size: int):
    """Pads every leaf's leading axis with zeros to ``size`` rows."""

    def pad(leaf):
        extra = size - leaf.shape[0]
        if extra <= 0:
            return leaf
        return np.concatenate([leaf, np.zeros((extra,) + leaf.shape[1:], leaf.dtype)])

    return jax.tree.map(pad, tree)


def _bucket(rows: int) -> int:
    """Rows rounded up to 1, 2, 3, 4, 6, 8, 12, 16, ... (few distinct source shapes)."""
    if rows <= 4:
        return max(rows, 1)
    power = 1 << (rows - 1).bit_length()
    return 3 * power // 4 if rows <= 3 * power // 4 else power


class _PreparedRound(NamedTuple):
    """A round planned on the host: everything its chunks and finish need."""

    state: Any
    plan: Any
    inputs: RoundInputs
    source: Any
    stateful: bool
    key_ids: np.ndarray
    table_rows: np.ndarray
    last: Any
    reported: Any
    work: Any
    capacity: int
    row_steps: int
    round_num: int
    seed: int


class _Caches:
    """What a process remembers between rounds; none of it changes a number."""

    def __init__(self):
        self.bound: dict[str, Any] = {}
        self.executor_name: str | None = None
        self.timings: dict[str, float] = {}
        self.source = None  # (key, device arrays, host arrays kept alive)
        self.fitting_signatures: set = set()
        self.checked_labels: set = set()
        self.output_spec = None
        self.state_template = None


class FederatedProcess:
    """A federated training process: ``initialize(seed)`` and ``next(state, cohort)``.

    Built by the `build_*` functions of `fedjax_keras.algorithms`, which pass
    the engine options (`EngineOptions`) through as keyword arguments.

    Args:
      model: from `fedjax_keras.from_keras_model`.
      algorithm: the `FederatedAlgorithm` to run.
      **engine_options: see `EngineOptions` (``batch_size``, ``epochs``,
        ``shuffle``, ``chunk_size``, ``step_buckets``, ``runner``,
        ``group_size``, ``data_placement``, ``device_data_limit``,
        ``population_size``, ``mesh``, ``max_nonfinite_rounds``).

    Attributes:
      model, algorithm, options: as given (never changed).
      placement: the `fedjax_keras.parallel.Placement` (mesh) rounds run on.
    """

    def __init__(self, model: Model, algorithm: FederatedAlgorithm, **engine_options):
        require_model(model)
        if not isinstance(algorithm, FederatedAlgorithm):
            raise TypeError(
                f"algorithm must be a FederatedAlgorithm; received {type(algorithm).__name__}."
            )
        self.model = model
        self.algorithm = algorithm
        self.options = EngineOptions(**engine_options)
        self.placement = Placement(self.options.mesh)
        self._chunk_program = make_chunk_program(algorithm, model)
        self._caches = _Caches()
        self._padding_warned = False
        self._start = self.placement.jit(self._start_impl, static_argnums=(2,))
        self._finish = self.placement.jit(self._finish_impl)

    # ------------------------------------------------------------- read-only views
    @property
    def mesh(self):
        """The `jax.sharding.Mesh` the clients are sharded over."""
        return self.placement.mesh

    @property
    def mode(self) -> str | None:
        """The executor's name ('vmap', 'sequential', 'unroll'), None until decided."""
        fixed = self._fixed_executor()
        return fixed.name if fixed is not None else self._caches.executor_name

    @property
    def runner_timings(self) -> dict[str, float]:
        """Seconds per client-step of each measured executor (empty unless measured)."""
        return dict(self._caches.timings)

    @property
    def name(self) -> str:
        return self.algorithm.name

    # ------------------------------------------------------------------ state
    def _client_state_default(self, weights: ModelWeights):
        """One client's initial row of the table, or None when nothing is kept per client."""
        algorithm_row = None
        if self.algorithm.client_state_init is not None:
            algorithm_row = self.algorithm.client_state_init(weights)
        aggregator_row = self.algorithm.aggregator.client_init(self._update_spec())
        if algorithm_row is None and not jax.tree.leaves(aggregator_row):
            return None
        return {
            "algorithm": () if algorithm_row is None else algorithm_row,
            "aggregator": aggregator_row,
        }

    def _update_spec(self):
        """Shapes of one client's update (what the aggregator sees), traced once."""
        return self._output_spec().update

    def _output_spec(self):
        """One client's `ClientOutput` as `jax.ShapeDtypeStruct`, traced once."""
        if self._caches.output_spec is None:
            one = jax.tree.map(
                lambda s: jax.ShapeDtypeStruct((1, 1) + tuple(s.shape[1:]), s.dtype),
                self.model.input_spec,
            )
            weights = self.model.initial_weights
            data = ClientBatchArrays(one["x"], one["y"], jax.ShapeDtypeStruct((1, 1), bool))
            default = self.algorithm.client_state_init
            row = () if default is None else default(weights)
            state = ServerState(weights, *self.algorithm.server_init(weights))
            spec = jax.eval_shape(
                lambda d, r: self.algorithm.client_program.run(
                    self.algorithm.broadcast(state), d, jax.random.PRNGKey(0), r
                ),
                data,
                row,
            )
            self._caches.output_spec = spec
        return self._caches.output_spec

    def initialize(self, seed: int = 0) -> ServerState:
        """The initial server state: the model's initial weights, fresh optimizer state.

        Args:
          seed: determines every random choice of the run (shuffling, Dropout,
            the server's and aggregator's randomness); an integer in [0, 2**32).

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
        weights = jax.tree.map(jnp.asarray, self.model.initial_weights)
        optimizer_state, algorithm_state = self.algorithm.server_init(weights)
        default = self._client_state_default(weights)
        table = None
        if default is not None:
            table = ClientTable.create(default, self.options.population_size or 0)
        return ServerState(
            model=weights,
            optimizer_state=optimizer_state,
            algorithm_state=algorithm_state,
            aggregator_state=self.algorithm.aggregator.init(self._update_spec()),
            client_states=table,
            round_num=np.int64(0),
            seed=np.int64(seed),
            nonfinite_rounds=np.int64(0),
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
        table = state.client_states
        if table is not None:
            table = table.with_default(self._client_state_default(weights))
        return state.replace(model=weights, client_states=table)

    def _state_template(self):
        """(treedef, leaf shapes) of this process's states, client table rows aside."""
        if self._caches.state_template is None:
            template = jax.eval_shape(lambda: self.initialize(0))
            template = template.replace(client_states=_table_without_rows(template.client_states))
            leaves, treedef = jax.tree.flatten(template)
            self._caches.state_template = (template, treedef, [np.shape(a) for a in leaves])
        return self._caches.state_template

    def _check_state(self, state) -> None:
        """Raises a `StateMismatchError` naming what differs when ``state`` is not ours."""
        if not isinstance(state, ServerState):
            raise StateMismatchError(
                f"{self.name}.next expects the ServerState of its own initialize/next; "
                f"received {type(state).__name__}."
            )
        template, treedef, shapes = self._state_template()
        # Hyper-parameters in the state (a sweep's run) are checked where they are used.
        mine = state.replace(client_states=_table_without_rows(state.client_states), hyperparams={})
        leaves, received = jax.tree.flatten(mine)
        if received == treedef and [np.shape(a) for a in leaves] == shapes:
            return
        for part in ("model", "optimizer_state", "algorithm_state", "aggregator_state"):
            _compare_trees(part, getattr(template, part), getattr(state, part), self.name)
        table, expected = state.client_states, template.client_states
        if (table is None) != (expected is None):
            raise StateMismatchError(
                f"The state {'has' if table is not None else 'lacks'} a client table but "
                f"{self.name} {'keeps no' if expected is None else 'keeps a'} per-client state: "
                "it was built by another process (algorithm). Use this process's initialize()."
            )
        _compare_trees("client_states", expected, mine.client_states, self.name)

    # ------------------------------------------------------------------ cohort
    def _check_cohort_fits(self, cohort: FederatedData) -> None:
        """Raises one clear ValueError when the cohort's examples do not fit the model.

        Traces the model's loss on one example of the cohort's shapes (abstractly,
        nothing runs), once per distinct signature, before anything is compiled:
        variable lengths the model accepts pass, what it rejects is named.
        """
        source, _ = cohort.source_rows
        leaves, treedef = jax.tree.flatten(source)
        signature = (treedef, tuple((np.shape(a)[1:], np.asarray(a).dtype) for a in leaves))
        if signature in self._caches.fitting_signatures:
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
        self._caches.fitting_signatures.add(signature)

    def _check_labels(self, cohort: FederatedData) -> None:
        """Integer labels out of the model's classes are an error, checked once per source."""
        source, _ = cohort.source_rows
        key = tuple(id(leaf) for leaf in jax.tree.leaves(source["y"]))
        if key in self._caches.checked_labels:
            return
        self.model.check_labels(cohort)
        if len(self._caches.checked_labels) > 64:
            self._caches.checked_labels.clear()
        self._caches.checked_labels.add(key)

    def _table_for(self, state: ServerState, cohort: FederatedData):
        """The state's client table, sized to the cohort's population if still unsized."""
        table = state.client_states
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

    def _device_source(self, source: dict):
        """The cohort's source arrays on the devices, or None to batch on the host.

        A population reused round after round is transferred once and kept; a
        fresh source (a list cohort) is padded to a bucket of rows, so the
        programs that gather from it see a few shapes, not one per round.
        Sources larger than ``device_data_limit`` bytes are batched on the host.
        """
        leaves = jax.tree.leaves(source)
        key = tuple((id(leaf), leaf.shape) for leaf in leaves)
        cached = self._caches.source
        if cached is not None and cached[0] == key:
            return cached[1]
        size = sum(leaf.nbytes for leaf in leaves)
        placement = self.options.data_placement
        if placement == "host" or (placement == "auto" and size > self.options.data_limit_bytes):
            return None
        rows = leaves[0].shape[0] if leaves else 0
        padded = _pad_leading(source, _bucket(rows))
        on_device = self.placement.replicated(jax.device_put(padded))
        # Keep the host arrays referenced too, so `id` stays unique while cached.
        self._caches.source = (key, on_device, source)
        return on_device

    # -------------------------------------------------------------- executors
    def _fixed_executor(self):
        executors, measure = self.options.executor_candidates(self.model.has_convolutions)
        return executors[0] if len(executors) == 1 and not measure else None

    def _bound(self, executor):
        name = executor.name
        if name not in self._caches.bound:
            self._caches.bound[name] = executor.bind(self._chunk_program, self.placement)
        return self._caches.bound[name]

    def _executor_for(self, carry, inputs, chunk, host):
        """The bound executor: fixed by the options, or measured once on the first chunk."""
        fixed = self._fixed_executor()
        if fixed is not None:
            return self._bound(fixed)
        if self._caches.executor_name is None:
            executors, _ = self.options.executor_candidates(self.model.has_convolutions)
            bound = {e.name: self._bound(e) for e in executors}
            name, timings = choose_fastest(bound, carry, inputs, chunk, host)
            self._caches.executor_name = agree_across_processes(name, list(bound))
            self._caches.timings = timings
        return self._caches.bound[self._caches.executor_name]

    # ------------------------------------------------------------------ round
    def _start_impl(self, agg_state, table, capacity):
        spec = self._output_spec()
        return start_carry(self.algorithm, self.model, spec, agg_state, table, capacity)

    def _finish_impl(self, state, carry, seed_and_round):
        return finish_round(self.algorithm, self.model, state, carry, round_key(seed_and_round))

    def _chunk(self, prepared: "_PreparedRound", index: int, row_steps: int):
        """Chunk ``index`` of a prepared round, as host arrays."""
        plan, source, stateful = prepared.plan, prepared.source, prepared.stateful
        key_ids, table_rows, last = prepared.key_ids, prepared.table_rows, prepared.last
        reported, work = prepared.reported, prepared.work
        batches = plan.chunk(index) if source is None else plan.chunk_rows(index)
        positions = np.asarray(batches.client_positions)
        at = np.maximum(positions, 0)
        valid = positions >= 0
        mask, num_steps = batches.mask, np.asarray(batches.num_steps)
        if reported is not None:
            # Dropouts leave the round like padding; stragglers stop early (masked steps).
            valid &= reported[at]
            num_steps = np.where(valid, completed_steps(num_steps, work[at]), 0)
            mask = mask & (np.arange(mask.shape[1]) < num_steps[:, None])[:, :, None]
        if source is None:
            data, rows = ClientBatchArrays(batches.x, batches.y, mask), None
        else:
            # Row indices are cheap: pad every chunk of the round to one step count,
            # so chunks of different lengths share one program (the loop stops at
            # the chunk's own length).
            extra = ((0, 0), (0, row_steps - mask.shape[1]), (0, 0))
            data = ClientBatchArrays(None, None, np.pad(mask, extra))
            rows = np.pad(batches.rows, extra)
        slots = index * plan.chunk_size + np.arange(len(positions))
        info = ChunkInfo(
            positions=positions.astype(np.int32),
            key_ids=np.where(valid, key_ids[at], 0).astype(np.int32),
            valid=valid,
            table_rows=np.where(valid, table_rows[at], 0).astype(np.int32)
            if stateful
            else np.zeros(len(positions), np.int32),
            write=valid & last[at] if stateful else np.zeros(len(positions), bool),
            slots=np.where(valid, slots, _NO_SLOT).astype(np.int32),
        )
        host = HostChunk(valid, num_steps)
        return Chunk(data, rows, info), host

    def next(self, state: ServerState, cohort) -> RoundOutput:
        """Runs one round on ``cohort`` and returns the new state and the round's metrics.

        Args:
          state: from `initialize` or a previous `next` of this process.
          cohort: the round's clients: a `FederatedData` (e.g.
            ``data.sample_clients(20, seed=r)``) or a list of per-client
            ``{'x': ..., 'y': ...}`` dicts or ``(x, y)`` tuples.

        Returns:
          `RoundOutput` with metrics ``loss`` (example-weighted mean training
          loss), the model's metrics (both NaN, with a warning, when no
          example counted), the aggregator's and server's metrics,
          ``num_examples``, ``num_clients`` (clients aggregated),
          ``num_empty_clients`` (without examples), ``num_dropped_clients``
          (non-finite results, left out), ``server_update_nonfinite`` (1 when
          the server update was not finite and not applied),
          ``padding_fraction`` and ``runner``.

        Raises:
          StateMismatchError: ``state`` was built by another process.
          NonFiniteServerUpdateError: the server update was not finite in
            ``max_nonfinite_rounds`` consecutive rounds.
          ValueError / TypeError: a cohort that does not fit the model or the state.
        """
        prepared = self._prepare(state, cohort)
        state, plan = prepared.state, prepared.plan
        carry = self._start(state.aggregator_state, state.client_states, prepared.capacity)
        carry = self.placement.replicated(carry)
        first = self._chunk(prepared, 0, prepared.row_steps)
        bound = self._executor_for(carry, prepared.inputs, *first)
        if prepared.source is not None and hasattr(bound, "run_chunks"):
            # Row indices only (the examples stay on the device): small enough to
            # hand the executor the whole round at once.
            parts = [first] + [
                self._chunk(prepared, i, prepared.row_steps) for i in range(1, plan.num_chunks)
            ]
            carry = bound.run_chunks(
                carry, prepared.inputs, [c for c, _ in parts], [h for _, h in parts]
            )
        else:
            # Batches built on the host: one chunk at a time, so host memory
            # follows the chunk size, not the cohort.
            for index in range(plan.num_chunks):
                chunk, host = (
                    first if index == 0 else self._chunk(prepared, index, prepared.row_steps)
                )
                carry = bound(carry, prepared.inputs, chunk, host)
        new_state, metrics, flags, reports = self._finish(
            state, carry, prepared.inputs.seed_and_round
        )
        host_metrics = _to_host_metrics(metrics)
        host_metrics.update(_client_reports(reports, plan))
        new_state = self._advance(new_state, state, host_metrics, prepared, np.asarray(flags))
        host_metrics["runner"] = bound.name
        return RoundOutput(new_state, self._finish_metrics(new_state, host_metrics, prepared))

    def _prepare(self, state: ServerState, cohort) -> "_PreparedRound":
        """Checks ``state`` and ``cohort`` and plans the round on the host (nothing runs)."""
        self._check_state(state)
        from_list = not isinstance(cohort, FederatedData)
        cohort = as_cohort(cohort)
        if from_list and state.client_states is not None:
            raise TypeError(
                f"{self.name} keeps state per client, so a cohort must carry stable client "
                "ids: pass a FederatedData sampled from the population (e.g. "
                "data.sample_clients(...)), not a list of client datasets."
            )
        if cohort.num_clients == 0:
            raise ValueError("The cohort has no clients; sample at least one client per round.")
        self._check_cohort_fits(cohort)
        self._check_labels(cohort)
        table = self._table_for(state, cohort)
        round_num, seed = int(state.round_num), int(state.seed)
        plan = plan_cohort(
            cohort,
            batch_size=self.options.batch_size,
            epochs=self.options.epochs,
            shuffle=self.options.shuffle,
            seed=seed * 2**32 + round_num,
            chunk_size=self.options.chunk_size_for(cohort.num_clients, self.placement.num_devices),
            step_buckets=self.options.step_buckets,
        )
        seed_and_round = np.array([seed % 2**32, round_num % 2**32], np.uint32)
        state = self.placement.replicated(state.replace(client_states=table))
        source = self._device_source(plan.source)
        inputs = self.placement.replicated(
            RoundInputs(self.algorithm.broadcast(state), seed_and_round, None, None)
        )._replace(source=source, aggregator_state=state.aggregator_state)
        stateful = table is not None
        # Population ids are plain (vectorised) even when repeats are renamed; the
        # cohort position folded into each key keeps repeated draws distinct.
        positions = cohort.population_positions
        unreliable = self.options.unreliable_clients
        reported = work = None
        if unreliable is not None and unreliable.active:
            reported, work = unreliable.draw(seed, round_num, cohort.num_clients)
        reports = jax.tree.leaves(self._output_spec().report)
        needs_slots = self.algorithm.aggregator.stacked or bool(reports)
        return _PreparedRound(
            state=state,
            plan=plan,
            inputs=inputs,
            source=source,
            stateful=stateful,
            key_ids=client_key_ids(cohort.population_ids),
            table_rows=positions,
            last=_last_occurrence(positions) if stateful else None,
            reported=reported,
            work=work,
            capacity=plan.num_chunks * plan.chunk_size if needs_slots else 0,
            row_steps=1 << (int(plan.chunk_steps.max()) - 1).bit_length(),
            round_num=round_num,
            seed=seed,
        )

    def _advance(self, new_state, state, metrics: dict, prepared, flags) -> ServerState:
        """The round counters of the new state; raises after too many non-finite updates."""
        nonfinite = bool(metrics["server_update_nonfinite"])
        streak = int(state.nonfinite_rounds) + 1 if nonfinite else 0
        if nonfinite and streak >= self.options.max_nonfinite_rounds:
            raise NonFiniteServerUpdateError(
                _nonfinite_message(self.name, prepared.round_num, state, flags, streak)
            )
        return new_state.replace(
            round_num=np.int64(prepared.round_num + 1),
            seed=np.int64(prepared.seed),
            nonfinite_rounds=np.int64(streak),
        )

    def _warn_about_padding(self, plan) -> None:
        # Once per process: the cause rarely changes between rounds, and a warning
        # whose percentages change every round would print every round.
        if self._padding_warned:
            return
        message = padding_warning(plan)
        if message is not None:
            self._padding_warned = True
            warnings.warn(message, PaddingWarning, stacklevel=4)

    def _finish_metrics(self, new_state, metrics: dict, prepared) -> dict:
        """Host-side metrics: unreliable clients, padding, the host_metrics functions."""
        if prepared.reported is not None:
            metrics["num_unreported_clients"] = int(np.sum(~prepared.reported))
            metrics["num_stragglers"] = int(np.sum(prepared.reported & (prepared.work < 1)))
        metrics["padding_fraction"] = float(prepared.plan.padding_fraction)
        self._warn_about_padding(prepared.plan)
        for hook in self.options.host_metrics:
            extra = hook(new_state, dict(metrics))
            if not isinstance(extra, dict):
                raise TypeError(
                    f"host_metrics function {hook!r} returned {type(extra).__name__}; expected "
                    "a dict of metric names to values."
                )
            metrics.update(extra)
        _warn_if_empty(metrics, prepared.round_num)
        return metrics


def _table_without_rows(table):
    """The table's default row alone: its row count varies with the population."""
    return None if table is None else table.default


def _compare_trees(part: str, expected, received, name: str) -> None:
    expected_paths = {
        jax.tree_util.keystr(p): (tuple(np.shape(v)), np.dtype(v.dtype))
        for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]
    }
    try:
        received_paths = {
            jax.tree_util.keystr(p): (tuple(np.shape(v)), np.dtype(getattr(v, "dtype", None)))
            for p, v in jax.tree_util.tree_flatten_with_path(received)[0]
        }
    except TypeError as e:
        raise StateMismatchError(
            f"state.{part} is not a pytree of arrays ({e}); was the state built by {name}?"
        ) from None
    if jax.tree.structure(expected) == jax.tree.structure(received) and all(
        received_paths.get(path, (None, None))[0] == shape
        for path, (shape, _) in expected_paths.items()
    ):
        return
    missing = sorted(set(expected_paths) - set(received_paths))
    unexpected = sorted(set(received_paths) - set(expected_paths))
    reshaped = [
        f"{path} {received_paths[path][0]} (expected {shape})"
        for path, (shape, _) in expected_paths.items()
        if path in received_paths and received_paths[path][0] != shape
    ]
    details = (
        "; ".join(
            text
            for text in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"different shapes: {', '.join(reshaped[:5])}" if reshaped else "",
            )
            if text
        )
        or "a different tree structure"
    )
    raise StateMismatchError(
        f"state.{part} does not fit {name} ({details}): the state was built by another process "
        "(model, algorithm or optimizer). Use this process's initialize() or restore a "
        "checkpoint it wrote."
    )


def _nonfinite_message(name, round_num, state, flags, streak) -> str:
    paths = [
        f"{part}{jax.tree_util.keystr(path)}"
        for part in ("model", "optimizer_state", "algorithm_state")
        for path, _ in jax.tree_util.tree_flatten_with_path(getattr(state, part))[0]
    ]
    bad = [path for path, ok in zip(paths, flags) if not ok]
    return (
        f"{name}: the server update of round {round_num} was not finite in {', '.join(bad[:5])}"
        f"{' and more' if len(bad) > 5 else ''} ({streak} consecutive round(s)); it was not "
        "applied. Lower the server learning rate or check the server optimizer; pass "
        "max_nonfinite_rounds=N to tolerate N-1 such rounds in a row."
    )


def _client_reports(reports, plan) -> dict:
    """``clients/<name>`` arrays [cohort], in cohort order, from the reports by slot."""
    if reports == ():
        return {}
    slot_positions = np.asarray(plan.slot_positions)
    real = slot_positions >= 0
    result = {}
    for path, values in jax.tree_util.tree_flatten_with_path(jax.device_get(reports))[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        name = "/".join(keys[1:] if keys[0] == "report" else keys)
        values = np.asarray(values)
        ordered = np.empty((int(real.sum()),) + values.shape[1:], values.dtype)
        ordered[slot_positions[real]] = values[real]
        result[f"clients/{name}"] = ordered
    return result


def _warn_if_empty(metrics: dict, round_num: int) -> None:
    if metrics["num_examples"] > 0:
        return
    dropped, empty = metrics["num_dropped_clients"], metrics["num_empty_clients"]
    if dropped:
        why = f"all {dropped} client(s) with examples had non-finite results and were dropped"
    elif empty:
        why = f"the cohort's {empty} client(s) hold no examples"
    else:
        why = "no client counted"
    warnings.warn(
        f"Round {round_num}: {why}; the loss and the model's metrics are NaN and the model "
        "was not updated.",
        RuntimeWarning,
        stacklevel=3,
    )
