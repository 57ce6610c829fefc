"""Federated Averaging and its server-optimizer generalisation (FedOpt).

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, arXiv:1602.05629. Reddi et al., "Adaptive
Federated Optimization", ICLR 2021, arXiv:2003.00295 (FedAdam, FedYogi,
FedAdagrad: pass the optimizer as ``server_optimizer``).

Round: every client starts from the server weights ``w`` and runs local
steps of the client optimizer over its batches, ending at ``w_k``; the
aggregator combines the deltas ``d_k = w_k - w`` (by default the mean
weighted by example counts); the server optimizer steps on the
pseudo-gradient ``-aggregate``: with ``optax.sgd(1.0)``, ``w + mean(d_k)``.
"""

import jax
import jax.numpy as jnp

from fedjax_keras.aggregation import Aggregator, by_key, mean
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default
from fedjax_keras.algorithms._optimizers import delta_optimizers
from fedjax_keras.algorithms._schedules import run_hyperparams
from fedjax_keras.algorithms._server_step import (
    init_server_optimizer,
    pseudo_gradient_step,
)
from fedjax_keras.algorithms._weighting import (
    ClientWeighting,
    as_client_weighting,
    client_weight,
)
from fedjax_keras.client import (
    ClientOutput,
    ClientProgram,
    GradCorrection,
    TrainCarry,
    start_training,
    training_step,
)
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, check_choice, require_model
from fedjax_keras.models import Model, ModelWeights

NON_TRAINABLE_POLICIES = ("broadcast", "average", "per_client")


def fed_avg(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    non_trainable: str = "broadcast",
    aggregator: Aggregator | None = None,
    client_learning_rate_schedule=None,
    grad_correction: GradCorrection | None = None,
) -> FederatedAlgorithm:
    """Federated Averaging as a `FederatedAlgorithm` (McMahan et al. 2017, arXiv:1602.05629).

    Every client starts from the server weights and runs the client
    optimizer over its batches; the aggregator combines the deltas ``w_k -
    w``; the server optimizer steps on ``-aggregate``. With an adaptive server
    optimizer it is FedOpt (Reddi et al. 2021, arXiv:2003.00295:
    ``server_optimizer=adaptive_server_optimizer('adam', 0.01)`` is FedAdam).

    Args:
      model: from `fedjax_keras.from_keras_model`.
      client_optimizer: optax transform, Keras optimizer, or zero-argument
        callable returning one; with ``client_learning_rate_schedule``, a
        function ``learning rate -> optax transform``.
      server_optimizer: applied to the pseudo-gradient ``-aggregate``;
        default ``optax.sgd(1.0)`` (plain averaging).
      weighting: `ClientWeighting` (or its value): ``'num_examples'`` or ``'uniform'``.
      non_trainable: ``'broadcast'`` (server values sent to clients, left
        unchanged: TFF's behaviour), ``'average'`` (weighted mean of the clients'
        final values) or ``'per_client'`` (each client keeps its own, FedBN).
      aggregator: combines the clients' deltas (default: `mean`).
      client_learning_rate_schedule: None, or ``round -> learning rate``
        (see `build_weighted_fed_avg`).
      grad_correction: ``(grads, trainable, (broadcast, client_state)) ->
        grads`` applied in every local step (FedProx's proximal term); None
        for plain FedAvg.

    Returns:
      A `FederatedAlgorithm`, for ``FederatedProcess(model, algorithm, **engine_options)``
      or `fedjax_keras.sweep`.

    Example:
      >>> process = FederatedProcess(model, fed_avg(model, optax.sgd(0.05)), batch_size=10)
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    check_choice(non_trainable, NON_TRAINABLE_POLICIES, "non_trainable")
    delta_aggregator = aggregator_or_default(aggregator)
    client_opt, broadcast_fn, server_opt = delta_optimizers(
        model, client_optimizer, client_learning_rate_schedule, server_optimizer
    )
    averaged = non_trainable == "average"

    def start(broadcast, client_state) -> TrainCarry:
        server = broadcast.model
        start_non_trainable = (
            client_state if non_trainable == "per_client" else server.non_trainable
        )
        return start_training(
            model,
            client_opt(broadcast),
            ModelWeights(server.trainable, start_non_trainable),
            run_hyperparams(broadcast),
        )

    def step(carry: TrainCarry, batch, key, broadcast, client_state) -> TrainCarry:
        local_step = training_step(model, client_opt(broadcast), grad_correction)
        return local_step(carry, batch, key, broadcast, client_state)

    def finish(carry: TrainCarry, broadcast, client_state) -> ClientOutput:
        final = carry.weights
        delta = jax.tree.map(jnp.subtract, final.trainable, broadcast.model.trainable)
        return ClientOutput.from_training(
            carry,
            {"delta": delta, "non_trainable": final.non_trainable} if averaged else delta,
            client_weight(carry.num_examples, weighting),
            client_state=final.non_trainable if non_trainable == "per_client" else (),
        )

    def server_update(state, aggregate, key):
        del key
        if not averaged:
            return pseudo_gradient_step(server_opt, state, aggregate), {}
        state = pseudo_gradient_step(server_opt, state, aggregate["delta"])
        weights = ModelWeights(state.model.trainable, aggregate["non_trainable"])
        return state.replace(model=weights), {}

    weighted = weighting is ClientWeighting.NUM_EXAMPLES
    return FederatedAlgorithm(
        name="weighted_fed_avg" if weighted else "unweighted_fed_avg",
        client_program=ClientProgram(start, step, finish),
        server_init=init_server_optimizer(server_opt),
        server_update=server_update,
        aggregator=(
            by_key({"delta": delta_aggregator, "non_trainable": mean()})
            if averaged
            else delta_aggregator
        ),
        broadcast=broadcast_fn,
        client_state_init=(lambda w: w.non_trainable) if non_trainable == "per_client" else None,
    )


@process_builder(
    fed_avg, fixed={"weighting": ClientWeighting.NUM_EXAMPLES, "grad_correction": None}
)
def build_weighted_fed_avg(*args, **kwargs) -> FederatedProcess:
    """FedAvg with client updates weighted by their number of examples (TFF's name).

    McMahan et al. 2017, arXiv:1602.05629; with an adaptive ``server_optimizer``
    it is FedOpt (FedAdam, FedYogi, FedAdagrad; Reddi et al. 2021, arXiv:2003.00295).

    Args:
      model: from `fedjax_keras.from_keras_model`.
      client_optimizer: optax transform, Keras optimizer, or zero-argument
        callable returning one (TFF's ``client_optimizer_fn``); with
        ``client_learning_rate_schedule``, a function ``learning rate -> optax
        transform`` (``optax.sgd``).
      server_optimizer: applied to the pseudo-gradient ``-aggregate``;
        default ``optax.sgd(1.0)`` (plain averaging).
      non_trainable: what happens to non-trainable weights (BatchNorm
        statistics): 'broadcast' (sent to clients, kept unchanged on the
        server: TFF's behaviour), 'average' (weighted mean of the clients' final
        values) or 'per_client' (each client keeps its own: FedBN).
      aggregator: how the clients' deltas are combined, a
        `fedjax_keras.aggregation.Aggregator` (default: ``mean()``, weighted
        by example counts; e.g. ``clipped(1.0, mean())``).
      client_learning_rate_schedule: None, or ``round -> client learning
        rate`` (an optax schedule, evaluated at the round number inside the
        compiled program: nothing recompiles; TFF's
        ``build_weighted_fed_avg_with_optimizer_schedule``). For a server
        schedule, give the server optimizer one (``optax.sgd(schedule)``): it
        steps once per round.
      **engine_options: see `fedjax_keras.algorithms.EngineOptions`:
        ``batch_size`` (20), ``epochs`` (1), ``shuffle`` (True), ``chunk_size``,
        ``step_buckets``, ``runner``, ``group_size``, ``data_placement``,
        ``device_data_limit``, ``population_size``, ``mesh``, ``max_nonfinite_rounds``.

    Returns:
      A `FederatedProcess` with ``initialize(seed)`` and ``next(state, cohort)``.

    Example:
      >>> process = build_weighted_fed_avg(model, client_optimizer=optax.sgd(0.05),
      ...     server_optimizer=optax.sgd(1.0), batch_size=20, epochs=1, shuffle=True)
      >>> state = process.initialize(seed=0)
      >>> out = process.next(state, data.sample_clients(5, seed=0))
      >>> sorted(out.metrics)[:3]
      ['loss', 'num_clients', 'num_dropped_clients']
    """


@process_builder(fed_avg, fixed={"weighting": ClientWeighting.UNIFORM, "grad_correction": None})
def build_unweighted_fed_avg(*args, **kwargs) -> FederatedProcess:
    """FedAvg with every client that has examples weighted equally.

    Same arguments as `build_weighted_fed_avg`.
    """
