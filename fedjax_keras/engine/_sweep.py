"""Whole sweeps in one program: K runs vmapped over a leading runs axis.

A sweep trains K independent runs of one model and task, differing in their
seeds and in hyper-parameters that live in the state as arrays (client and
server learning rates), so every round of all K runs is one set of compiled
programs: the chunk program and the server step are `jax.vmap`-ed over the
runs. Run k equals a separate run with the same seed and learning rates (the
tests check it to 1e-5), at a fraction of K separate runs' cost
(benchmarks/NOTES.md).

How the learning rates become state: the sweep builds the process with
``optax.inject_hyperparams`` optimizers, keeps each run's server learning rate
in its server optimizer's state and each run's client learning rate in
``state.hyperparams['client']``, which the broadcast carries to the clients.

Limits: the `Vmap` executor only (host-driven steps are not vmapped over
runs), data kept on the device (cohorts sampled from one population), and
cohorts of one size per round (each run may have its own clients), and
algorithms of one pass per round (no `FirstPass`).
"""

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_keras.client import with_hyperparams
from fedjax_keras.engine._plan import chunk_arrays
from fedjax_keras.engine._process import FederatedProcess
from fedjax_keras.engine._results import advance, client_reports, to_host_metrics
from fedjax_keras.engine._state import ServerState
from fedjax_keras.parallel import RoundInputs, Vmap


class SweepOutput(NamedTuple):
    """What `Sweep.next` returns.

    Attributes:
      state: the K runs' `ServerState`, every leaf with a leading [runs] axis.
      metrics: dict of NumPy arrays [runs] (``clients/...`` arrays [runs, cohort]).
    """

    state: ServerState
    metrics: dict


def _stack(trees):
    """Leaves stacked along a new leading [runs] axis (device arrays stay on the device)."""

    def stack(*leaves):
        if any(isinstance(leaf, jax.Array) for leaf in leaves):
            return jnp.stack(leaves)
        return np.stack([np.asarray(leaf) for leaf in leaves])

    return jax.tree.map(stack, *trees)


def _as_runs(name: str, values, runs: int | None) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64 if name != "seeds" else None)
    if array.ndim != 1 or (runs is not None and len(array) not in (1, runs)):
        raise ValueError(
            f"{name} must be a list with one value per run ({runs} runs) or a single value; "
            f"received {values!r}."
        )
    return array


class Sweep:
    """K runs of one process, one compiled program per round for all of them.

    Args:
      build: ``build(client_optimizer, server_optimizer) -> FederatedProcess``,
        e.g. ``lambda c, s: build_weighted_fed_avg(model, c, s, batch_size=10)``;
        it is called once, with ``optax.inject_hyperparams(optax.sgd)``
        optimizers whose learning rates each run overrides.
      seeds: the runs' seeds (``initialize(seed)`` of each run).
      client_learning_rates: one per run, or one for all.
      server_learning_rates: one per run, or one for all (default 1.0).

    Example:
      >>> sweep = Sweep(lambda c, s: build_weighted_fed_avg(model, c, s, batch_size=10),
      ...               seeds=[0, 1], client_learning_rates=[0.05, 0.1])  # doctest: +SKIP
      >>> states = sweep.initialize()  # doctest: +SKIP
      >>> out = sweep.next(states, data.sample_clients(10, seed=0))  # doctest: +SKIP
      >>> out.metrics["loss"].shape  # doctest: +SKIP
      (2,)
    """

    def __init__(
        self,
        build: Callable[[Any, Any], FederatedProcess],
        seeds: Sequence[int],
        client_learning_rates,
        server_learning_rates=1.0,
    ):
        seeds = np.asarray(seeds)
        if seeds.ndim != 1 or len(seeds) == 0 or seeds.dtype.kind not in "iu":
            raise ValueError(f"seeds must be a non-empty list of ints; received {seeds!r}.")
        runs = len(seeds)
        client = _as_runs("client_learning_rates", np.atleast_1d(client_learning_rates), runs)
        server = _as_runs("server_learning_rates", np.atleast_1d(server_learning_rates), runs)
        self.seeds = seeds
        self.client_learning_rates = np.broadcast_to(client, (runs,)).astype(np.float32)
        self.server_learning_rates = np.broadcast_to(server, (runs,)).astype(np.float32)
        sgd = optax.inject_hyperparams(optax.sgd)
        self.process = build(sgd(learning_rate=0.0), sgd(learning_rate=0.0))
        if not isinstance(self.process, FederatedProcess):
            raise TypeError(
                f"build must return a FederatedProcess; returned {type(self.process).__name__}."
            )
        if self.process.algorithm.first_pass is not None:
            raise ValueError(
                f"{self.process.name} runs a first pass over each cohort before training "
                "(FederatedAlgorithm.first_pass), which a sweep does not vmap. Run each "
                "configuration as its own FederatedProcess, or pick the algorithm's one-pass "
                "variant (Mime: control_variate='previous_round')."
            )
        runner = self.process.options.runner
        if runner not in ("vmap", "auto") and not isinstance(runner, Vmap):
            raise ValueError(
                f"A sweep vmaps the Vmap executor over runs; the process has runner={runner!r}. "
                "Build it with runner='vmap'."
            )
        self._executor = self.process.bound_executor(runner if isinstance(runner, Vmap) else Vmap())
        self._start = jax.jit(
            jax.vmap(self.process.start_carry, in_axes=(0, 0, None), axis_size=runs),
            static_argnums=(2,),
        )
        inputs_axes = RoundInputs(0, 0, None, 0)
        self._run_chunk = jax.jit(
            jax.vmap(self._executor.run_chunk, in_axes=(0, inputs_axes, 0, 0), axis_size=runs),
            donate_argnums=(0,),
        )
        self._finish = jax.jit(jax.vmap(self.process.finish, axis_size=runs))

    @property
    def num_runs(self) -> int:
        return len(self.seeds)

    def initialize(self) -> ServerState:
        """The K runs' initial states, stacked along a leading [runs] axis."""
        states = []
        for seed, client_lr, server_lr in zip(
            self.seeds, self.client_learning_rates, self.server_learning_rates
        ):
            state = self.process.initialize(int(seed))
            optimizer_state = _with_learning_rate(state.optimizer_state, server_lr)
            states.append(
                state.replace(
                    optimizer_state=optimizer_state,
                    hyperparams={"client": {"learning_rate": np.float32(client_lr)}},
                )
            )
        return _stack(states)

    def run_state(self, states: ServerState, run: int) -> ServerState:
        """Run ``run``'s state alone (its leaves without the runs axis)."""
        state = jax.tree.map(lambda leaf: leaf[run], states)
        return state.replace(
            round_num=np.int64(state.round_num),
            seed=np.int64(state.seed),
            nonfinite_rounds=np.int64(state.nonfinite_rounds),
        )

    def next(self, states: ServerState, cohorts) -> SweepOutput:
        """One round of every run.

        Args:
          states: from `initialize` or a previous `next`.
          cohorts: one `FederatedData` for every run, or a list of K (each run
            its own clients, sampled from one population, of one size).

        Returns:
          `SweepOutput`: the new states and every run's metrics (arrays [runs]).
          A run whose server update is not finite keeps its previous state
          (``server_update_nonfinite`` says which); the sweep does not raise.
        """
        runs = self.num_runs
        if not isinstance(cohorts, (list, tuple)):
            cohorts = [cohorts] * runs
        if len(cohorts) != runs:
            raise ValueError(
                f"Give one cohort for all runs or one per run ({runs}); got {len(cohorts)}."
            )
        prepared = [
            self.process.prepare_round(self.run_state(states, k), cohort)
            for k, cohort in enumerate(cohorts)
        ]
        first = prepared[0]
        if first.source is None or any(p.source is not first.source for p in prepared):
            raise ValueError(
                "A sweep keeps the population on the device and shares it between runs: "
                "sample every run's cohort from one FederatedData, small enough for "
                "device_data_limit (or pass data_placement='device')."
            )
        if len({p.cohort_plan.num_chunks for p in prepared}) != 1:
            raise ValueError("Every run's cohort must have the same number of clients.")
        row_steps = max(p.row_steps for p in prepared)
        stacked_states = _stack([p.state for p in prepared])
        inputs = _stack([p.inputs._replace(source=None) for p in prepared])
        inputs = inputs._replace(source=first.source)
        carry = self._start(
            stacked_states.aggregator_state, stacked_states.client_states, first.capacity
        )
        for index in range(first.cohort_plan.num_chunks):
            parts = [chunk_arrays(p, index, row_steps) for p in prepared]
            chunk = _stack(_one_batch_width([c for c, _ in parts]))
            steps = np.array([self._executor.num_steps(host) for _, host in parts], np.int32)
            carry = self._run_chunk(carry, inputs, chunk, steps)
        new_states, metrics, _, reports = self._finish(stacked_states, carry, inputs.seed_and_round)
        # As `FederatedProcess.next`: a source changed in place runs the round again.
        changed = [self.process.forget_if_source_changed(p.cohort) for p in prepared]
        if any(changed):
            return self.next(states, [p.cohort for p in prepared])
        metrics = to_host_metrics(metrics)
        per_run = []
        for k, p in enumerate(prepared):
            state = jax.tree.map(lambda leaf, k=k: leaf[k], new_states)
            nonfinite = bool(metrics["server_update_nonfinite"][k])
            per_run.append(
                advance(state, p.state, nonfinite=nonfinite, round_num=p.round_num, seed=p.seed)
            )
            run_reports = jax.tree.map(lambda leaf, k=k: leaf[k], reports)
            for name, value in client_reports(run_reports, p.cohort_plan).items():
                metrics.setdefault(name, []).append(value)
        for name in [n for n in metrics if n.startswith("clients/")]:
            metrics[name] = np.stack(metrics[name])
        metrics["padding_fraction"] = np.array([p.cohort_plan.padding_fraction for p in prepared])
        return SweepOutput(_stack(per_run), metrics)


def _one_batch_width(chunks):
    """The runs' chunks with their batch axes padded (masked) to the widest.

    Each run's plan caps its batch axis at its own cohort's largest client when
    every client is smaller than ``batch_size`` (data/_batching.py), so runs
    with their own cohorts may differ there; masked slots change nothing.
    """
    width = max(chunk.data.mask.shape[-1] for chunk in chunks)

    def pad(array):
        extra = [(0, 0)] * (array.ndim - 1) + [(0, width - array.shape[-1])]
        return np.pad(array, extra)

    return [
        chunk._replace(data=chunk.data._replace(mask=pad(chunk.data.mask)), rows=pad(chunk.rows))
        for chunk in chunks
    ]


def _with_learning_rate(optimizer_state, learning_rate):
    """The server optimizer's state with its injected learning rate set."""
    if hasattr(optimizer_state, "hyperparams"):
        return with_hyperparams(optimizer_state, {"learning_rate": learning_rate})
    # An optimizer wrapped further (a chain): find the injected state inside.
    leaves = jax.tree.leaves(optimizer_state, is_leaf=lambda x: hasattr(x, "hyperparams"))
    if not any(hasattr(leaf, "hyperparams") for leaf in leaves):
        raise ValueError("The server optimizer must be the injected one the sweep passed.")
    return jax.tree.map(
        lambda leaf: (
            with_hyperparams(leaf, {"learning_rate": learning_rate})
            if hasattr(leaf, "hyperparams")
            else leaf
        ),
        optimizer_state,
        is_leaf=lambda x: hasattr(x, "hyperparams"),
    )


def sweep(build, seeds, client_learning_rates, server_learning_rates=1.0) -> Sweep:
    """`Sweep` (the function spelling): K runs vmapped in one program per round."""
    return Sweep(build, seeds, client_learning_rates, server_learning_rates)
