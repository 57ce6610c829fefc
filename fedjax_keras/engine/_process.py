"""The round loop: any `FederatedAlgorithm`, any executor, any mesh.

One round of a `FederatedProcess`:

1. the state and the cohort are checked (`fedjax_keras.engine._checks`:
   shapes, labels) and the round is planned on the host
   (`fedjax_keras.engine._plan`) into static-shape chunks
   ``[clients, steps, batch, ...]`` (clients sorted by step count, steps
   rounded up to a few buckets, the partial last batch masked): integer index
   arrays only;
2. each chunk is run by the executor (`fedjax_keras.parallel`): the clients'
   local work and the absorption of their outputs into the round's carry
   (aggregator, metric sums, client table) happen inside compiled programs,
   sharded over the mesh's devices;
3. one compiled program finalizes the aggregate and applies the algorithm's
   server update, guarded (`fedjax_keras.engine._round`); its metrics and
   the state's round counters are taken to the host
   (`fedjax_keras.engine._results`).

This module holds what a process keeps between rounds (its options, its
compiled programs; what it derives from its cohorts is in
`fedjax_keras.engine._cohort_caches`) and the loop over a round's chunks.

Three names for one thing: ``runner=`` is the option that picks how a chunk of
clients runs (`fedjax_keras.engine._runner`); the object that does it is an
executor of `fedjax_keras.parallel` (`Vmap`, `Stepwise`); ``mode`` and the
``runner`` metric are that executor's name.

Every compiled program is cached per chunk shape, so a run compiles a
handful of programs in its first rounds and none after. The process never
changes its options; what it caches (compiled programs, the population's
device copy, the executor measured once when asked to) does not change a
number.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras._numbers import is_integer
from fedjax_keras.client import ClientTable, round_key
from fedjax_keras.data import FederatedData, padding_warning
from fedjax_keras.engine._algorithm import FederatedAlgorithm, require_model
from fedjax_keras.engine._checks import check_state, checked_cohort, state_template
from fedjax_keras.engine._cohort_caches import CohortCaches
from fedjax_keras.engine._first_pass import FirstPassRunner
from fedjax_keras.engine._options import EngineOptions
from fedjax_keras.engine._plan import (
    RoundPlan,
    chunk_arrays,
    plan_round,
)
from fedjax_keras.engine._results import (
    advance,
    client_reports,
    finish_host_metrics,
    nonfinite_message,
    to_host_metrics,
)
from fedjax_keras.engine._round import finish_round, make_chunk_program, start_carry
from fedjax_keras.engine._runner import RunnerChoice
from fedjax_keras.engine._state import (
    RoundOutput,
    ServerState,
    client_output_spec,
    client_state_default,
)
from fedjax_keras.errors import NonFiniteServerUpdateError, PaddingWarning
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.parallel import Placement


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
        self._runner = RunnerChoice(
            self.options,
            model.has_convolutions,
            make_chunk_program(algorithm, model),
            self.placement,
            num_weight_tensors=len(model.initial_weights.trainable),
        )
        self._cohort_caches = CohortCaches(model, self.options, self.placement)
        self._output_spec_cache = None
        self._state_template_cache = None
        self._padding_warned = False
        self._start = self.placement.jit(self.start_carry, static_argnums=(2,))
        self._finish = self.placement.jit(self.finish)
        self._first_pass = None
        if algorithm.first_pass is not None:
            self._first_pass = FirstPassRunner(self, FederatedProcess)

    # ------------------------------------------------------------- read-only views
    @property
    def mesh(self):
        """The `jax.sharding.Mesh` the clients are sharded over."""
        return self.placement.mesh

    @property
    def mode(self) -> str | None:
        """The executor's name ('vmap', 'sequential', 'unroll'), None until decided."""
        return self._runner.name

    @property
    def runner_timings(self) -> dict[str, float]:
        """Seconds per client-step of each measured executor (empty unless measured)."""
        return dict(self._runner.timings)

    @property
    def name(self) -> str:
        return self.algorithm.name

    # ------------------------------------------------------------------ state
    def _client_state_default(self, weights: ModelWeights):
        """One client's initial row of the table, or None when nothing is kept per client."""
        return client_state_default(self.algorithm, weights, self._output_spec().update)

    def _output_spec(self):
        """One client's `ClientOutput` as `jax.ShapeDtypeStruct`, traced once."""
        if self._output_spec_cache is None:
            self._output_spec_cache = client_output_spec(self.model, self.algorithm)
        return self._output_spec_cache

    def initialize(self, seed: int = 0) -> ServerState:
        """The initial server state: the model's initial weights, fresh optimizer state.

        Args:
          seed: determines every random choice of the run (shuffling, Dropout,
            the server's and aggregator's randomness); an integer in [0, 2**32).

        Raises:
          ValueError: for a seed out of that range (the round's shuffle seed
            is ``seed * 2**32 + round_num``).
        """
        if not is_integer(seed) or not 0 <= seed < 2**32:
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
            aggregator_state=self.algorithm.aggregator.init(self._output_spec().update),
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
        """(template, treedef, leaf shapes) of this process's states, client table rows aside."""
        if self._state_template_cache is None:
            self._state_template_cache = state_template(jax.eval_shape(lambda: self.initialize(0)))
        return self._state_template_cache

    # ------------------------------------------------------------------ cohort
    def forget_if_source_changed(self, cohort: FederatedData) -> bool:
        """Whether ``cohort``'s arrays changed in place since its round was planned.

        The caches that vouched for them (device copy, label check) are dropped,
        so the round must be run again; `next` and `Sweep.next` do.
        """
        return self._cohort_caches.forget_if_changed(cohort)

    def bound_executor(self, executor):
        """``executor`` bound to this process's chunk program and mesh, bound once."""
        return self._runner.bind(executor)

    # ------------------------------------------------------------------ round
    def start_carry(self, agg_state, table, capacity: int):
        """The round's carry before its first chunk (not compiled; `Sweep` vmaps it)."""
        spec = self._output_spec()
        return start_carry(self.algorithm, self.model, spec, agg_state, table, capacity)

    def finish(self, state, carry, seed_and_round):
        """The aggregate finalized and the server update applied (not compiled)."""
        return finish_round(self.algorithm, self.model, state, carry, round_key(seed_and_round))

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
          ``padding_fraction`` and ``runner``; an algorithm with a `FirstPass`
          adds ``first_pass/loss``, ``first_pass/num_examples``,
          ``first_pass/num_clients`` and ``first_pass/num_dropped_clients``.

        Raises:
          StateMismatchError: ``state`` was built by another process.
          NonFiniteServerUpdateError: the server update was not finite in
            ``max_nonfinite_rounds`` consecutive rounds.
          ValueError / TypeError: a cohort that does not fit the model or the state.
        """
        given = state
        first_metrics = {}
        if self._first_pass is not None:
            check_state(state, self._state_template(), self.name)
            state, first_metrics = self._first_pass.run(state, cohort)
        round_plan = self.prepare_round(state, cohort)
        state, plan, row_steps = round_plan.state, round_plan.cohort_plan, round_plan.row_steps
        carry = self._start(state.aggregator_state, state.client_states, round_plan.capacity)
        carry = self.placement.replicated(carry)
        first = chunk_arrays(round_plan, 0, row_steps)
        bound = self._runner.executor_for(carry, round_plan.inputs, *first)
        if round_plan.source is not None and hasattr(bound, "run_chunks"):
            # Row indices only (the examples stay on the device): small enough to
            # hand the executor the whole round at once.
            parts = [first] + [
                chunk_arrays(round_plan, i, row_steps) for i in range(1, plan.num_chunks)
            ]
            carry = bound.run_chunks(
                carry, round_plan.inputs, [c for c, _ in parts], [h for _, h in parts]
            )
        else:
            # Batches built on the host: one chunk at a time, so host memory
            # follows the chunk size, not the cohort.
            for index in range(plan.num_chunks):
                chunk, host = first if index == 0 else chunk_arrays(round_plan, index, row_steps)
                carry = bound(carry, round_plan.inputs, chunk, host)
        new_state, metrics, flags, reports = self._finish(
            state, carry, round_plan.inputs.seed_and_round
        )
        # Checked while the device runs the round (nothing above waited for it).
        if self._cohort_caches.forget_if_changed(round_plan.cohort):
            # The arrays changed in place since the caches vouched for them: the
            # round ran on stale values or unchecked labels. Run it again on the new.
            return self.next(given, round_plan.cohort)
        host_metrics = to_host_metrics(metrics)
        host_metrics.update(client_reports(reports, plan))
        nonfinite = bool(host_metrics["server_update_nonfinite"])
        new_state = advance(
            new_state,
            state,
            nonfinite=nonfinite,
            round_num=round_plan.round_num,
            seed=round_plan.seed,
        )
        streak = int(new_state.nonfinite_rounds)
        if nonfinite and streak >= self.options.max_nonfinite_rounds:
            raise NonFiniteServerUpdateError(
                nonfinite_message(self.name, round_plan.round_num, state, np.asarray(flags), streak)
            )
        host_metrics["runner"] = bound.name
        host_metrics.update(first_metrics)
        self._warn_about_padding(plan)
        host_metrics = finish_host_metrics(
            host_metrics, new_state, round_plan, self.options.host_metrics
        )
        return RoundOutput(new_state, host_metrics)

    def prepare_round(self, state: ServerState, cohort) -> RoundPlan:
        """Checks ``state`` and ``cohort`` and plans the round on the host (nothing runs).

        `next` runs the plan; `Sweep` plans each of its runs' rounds with it.

        Raises:
          StateMismatchError, ValueError, TypeError: as `next`.
        """
        check_state(state, self._state_template(), self.name)
        cohort = checked_cohort(
            cohort, keeps_client_state=state.client_states is not None, name=self.name
        )
        on_device = self._cohort_caches.checked_source(cohort)
        reports = jax.tree.leaves(self._output_spec().report)
        return plan_round(
            state,
            cohort,
            options=self.options,
            placement=self.placement,
            broadcast=self.algorithm.broadcast,
            source=on_device,
            needs_slots=self.algorithm.aggregator.stacked or bool(reports),
        )

    def _warn_about_padding(self, plan) -> None:
        # Once per process: the cause rarely changes between rounds, and a warning
        # whose percentages change every round would print every round.
        if self._padding_warned:
            return
        message = padding_warning(plan)
        if message is not None:
            self._padding_warned = True
            warnings.warn(message, PaddingWarning, stacklevel=3)
