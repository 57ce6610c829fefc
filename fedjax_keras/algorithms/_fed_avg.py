"""Federated Averaging and its server-optimizer generalisation (FedOpt).

McMahan et al., "Communication-Efficient Learning of Deep Networks from
Decentralized Data", AISTATS 2017, arXiv:1602.05629. Reddi et al., "Adaptive
Federated Optimization", ICLR 2021, arXiv:2003.00295 (FedAdam, FedYogi,
FedAdagrad: pass the optimizer as ``server_optimizer``).
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras.aggregation import ClientOutput, weighted_mean
from fedjax_keras.algorithms._process import AlgorithmSpec, FederatedProcess, require_model
from fedjax_keras.client import ClientProgram, TrainCarry, start_training, training_step
from fedjax_keras.client._local_update import GradCorrection
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import as_optimizer
from fedjax_keras.optimizers._functional import tree_where

WEIGHTINGS = ("num_examples", "uniform")
NON_TRAINABLE_POLICIES = ("broadcast", "average", "per_client")


def _check_choice(value, choices, argument):
    if value not in choices:
        raise ValueError(f"{argument} must be one of {choices}; received {value!r}.")


def client_weight(num_examples, weighting: str):
    """A client's aggregation weight: its example count, or 1 if it has any examples."""
    if weighting == "num_examples":
        return num_examples.astype(jnp.float32)
    return jnp.where(num_examples > 0, 1.0, 0.0)


def apply_pseudo_gradient(server_optimizer, model: ModelWeights, optimizer_state, acc):
    """Server step on ``-mean(client delta)``; a round with zero total weight is a no-op."""
    mean_delta = weighted_mean(acc.update_sum, acc.weight_sum)
    pseudo_gradient = jax.tree.map(jnp.negative, mean_delta)
    new_trainable, new_state = server_optimizer.update(
        pseudo_gradient, optimizer_state, model.trainable
    )
    has_weight = acc.weight_sum > 0
    return (
        tree_where(has_weight, new_trainable, model.trainable),
        tree_where(has_weight, new_state, optimizer_state),
    )


def fed_avg_spec(
    model: Model,
    client_optimizer,
    server_optimizer,
    *,
    weighting: str = "num_examples",
    non_trainable: str = "broadcast",
    grad_correction: GradCorrection | None = None,
    name: str = "fed_avg",
) -> AlgorithmSpec:
    """The `AlgorithmSpec` of FedAvg with optional gradient correction (FedProx).

    Args:
      model: the wrapped model.
      client_optimizer, server_optimizer: anything `as_optimizer` accepts.
      weighting: ``'num_examples'`` or ``'uniform'``.
      non_trainable: ``'broadcast'`` (server values sent to clients, left
        unchanged: TFF's behaviour), ``'average'`` (weighted mean of the clients'
        final values) or ``'per_client'`` (each client keeps its own, FedBN).
      grad_correction: ``(grads, trainable, (broadcast, client_state)) -> grads``.
      name: for messages.
    """
    require_model(model)
    _check_choice(weighting, WEIGHTINGS, "weighting")
    _check_choice(non_trainable, NON_TRAINABLE_POLICIES, "non_trainable")
    template = model.initial_weights.trainable
    client_opt = as_optimizer(client_optimizer, template, argument="client_optimizer")
    server_opt = as_optimizer(server_optimizer, template, argument="server_optimizer")
    step = training_step(model, client_opt, grad_correction)

    def start(broadcast, client_state) -> TrainCarry:
        server = broadcast.model
        start_non_trainable = (
            client_state if non_trainable == "per_client" else server.non_trainable
        )
        return start_training(
            model, client_opt, ModelWeights(server.trainable, start_non_trainable)
        )

    def finish(carry: TrainCarry, broadcast, client_state) -> ClientOutput:
        final = carry.weights
        return ClientOutput(
            update=jax.tree.map(jnp.subtract, final.trainable, broadcast.model.trainable),
            weight=client_weight(carry.num_examples, weighting),
            weighted_extras=final.non_trainable if non_trainable == "average" else (),
            summed_extras=(),
            metrics=carry.metrics,
            loss_sum=carry.loss_sum,
            num_examples=carry.num_examples,
            client_state=final.non_trainable if non_trainable == "per_client" else (),
        )

    def server_fn(model_weights, optimizer_state, extra, acc, population):
        trainable, optimizer_state = apply_pseudo_gradient(
            server_opt, model_weights, optimizer_state, acc
        )
        new_non_trainable = model_weights.non_trainable
        if non_trainable == "average":
            averaged = weighted_mean(acc.weighted_extras_sum, acc.weight_sum)
            new_non_trainable = tree_where(acc.weight_sum > 0, averaged, new_non_trainable)
        return ModelWeights(trainable, new_non_trainable), optimizer_state, extra

    return AlgorithmSpec(
        name=name,
        program=ClientProgram(start, step, finish),
        server_fn=server_fn,
        init_optimizer_state=server_opt.init,
        client_state_default=(lambda w: w.non_trainable) if non_trainable == "per_client" else None,
    )


def build_weighted_fed_avg(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    non_trainable: str = "broadcast",
    **engine_options,
) -> FederatedProcess:
    """FedAvg with client updates weighted by their number of examples (TFF's name).

    McMahan et al. 2017, arXiv:1602.05629; with an adaptive ``server_optimizer``
    it is FedOpt (FedAdam, FedYogi, FedAdagrad; Reddi et al. 2021, arXiv:2003.00295).

    Args:
      model: from `fedjax_keras.from_keras_model`.
      client_optimizer: optax transform, Keras optimizer, or zero-argument
        callable returning one (TFF's ``client_optimizer_fn``).
      server_optimizer: applied to the pseudo-gradient ``-mean(client delta)``;
        default ``optax.sgd(1.0)`` (plain averaging).
      non_trainable: what happens to non-trainable weights (BatchNorm
        statistics): 'broadcast' (sent to clients, kept unchanged on the
        server: TFF's behaviour), 'average' (weighted mean of the clients' final
        values) or 'per_client' (each client keeps its own: FedBN).
      **engine_options: see `FederatedProcess`:
        ``batch_size`` (20), ``epochs`` (1), ``shuffle`` (True), ``chunk_size``,
        ``step_buckets``, ``runner``, ``group_size``, ``data_placement``,
        ``device_data_limit``, ``client_state_placement``.

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
    spec = fed_avg_spec(
        model,
        client_optimizer,
        default_server_optimizer(server_optimizer),
        weighting="num_examples",
        non_trainable=non_trainable,
        name="weighted_fed_avg",
    )
    return FederatedProcess(model, spec, **engine_options)


def build_unweighted_fed_avg(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    non_trainable: str = "broadcast",
    **engine_options,
) -> FederatedProcess:
    """FedAvg with every client that has examples weighted equally.

    Same arguments as `build_weighted_fed_avg`.
    """
    spec = fed_avg_spec(
        model,
        client_optimizer,
        default_server_optimizer(server_optimizer),
        weighting="uniform",
        non_trainable=non_trainable,
        name="unweighted_fed_avg",
    )
    return FederatedProcess(model, spec, **engine_options)


def default_server_optimizer(server_optimizer):
    """``optax.sgd(1.0)`` (the server takes the clients' mean) when none is given."""
    return optax.sgd(1.0) if server_optimizer is None else server_optimizer
