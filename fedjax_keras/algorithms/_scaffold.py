"""SCAFFOLD: control variates correct the client drift of FedAvg.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, arXiv:1910.06378; option II of the control-variate update.
Clients take local SGD steps on ``g + c - c_i``; after ``K`` steps of learning
rate ``lr`` a client sets ``c_i+ = c_i - c + (x - y_i) / (K * lr)``; the server
adds ``sum(c_i+ - c_i) / N`` to ``c``, ``N`` being the population size (the
rows of the client table). Each client's ``c_i`` is kept in the state's
client table.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras.aggregation import Aggregator, by_key, check_aggregator, mean
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._fed_avg import (
    WEIGHTINGS,
    client_weight,
    default_server_optimizer,
    pseudo_gradient_step,
)
from fedjax_keras.client import (
    ClientOutput,
    ClientProgram,
    TrainCarry,
    start_training,
    training_step,
)
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, check_choice, require_model
from fedjax_keras.models import Model
from fedjax_keras.optimizers import as_optimizer, from_optax


def build_scaffold(
    model: Model,
    client_learning_rate: float,
    server_optimizer=None,
    *,
    population_size: int | None = None,
    weighting: str = "num_examples",
    aggregator: Aggregator | None = None,
    **engine_options,
) -> FederatedProcess:
    """SCAFFOLD with local SGD of rate ``client_learning_rate``.

    Args:
      model: from `from_keras_model`.
      client_learning_rate: the local SGD learning rate (SCAFFOLD's option II
        control-variate update assumes plain SGD).
      server_optimizer: applied to ``-aggregate(delta)``; default ``optax.sgd(1.0)``.
      population_size: ``N``, the number of clients in the population (the
        client table's rows). When None, the first cohort's population size.
      weighting: 'num_examples' or 'uniform' for the model deltas.
      aggregator: combines the model deltas (default: the weighted mean); the
        control-variate deltas are always summed.
      **engine_options: see `build_weighted_fed_avg`.
    """
    require_model(model)
    check_choice(weighting, WEIGHTINGS, "weighting")
    if (
        isinstance(client_learning_rate, bool)
        or not isinstance(client_learning_rate, (int, float))
        or not client_learning_rate > 0
    ):
        raise ValueError(f"client_learning_rate must be > 0; received {client_learning_rate!r}.")
    lr = float(client_learning_rate)
    delta_aggregator = check_aggregator(mean() if aggregator is None else aggregator)
    template = model.initial_weights.trainable
    server_opt = as_optimizer(
        default_server_optimizer(server_optimizer), template, argument="server_optimizer"
    )

    def corrected(grads, trainable, context):
        broadcast, client_control = context
        return jax.tree.map(
            lambda g, c, ci: g + c - ci, grads, broadcast.algorithm_state, client_control
        )

    client_opt = from_optax(optax.sgd(lr))
    step = training_step(model, client_opt, corrected)

    def start(broadcast, client_control) -> TrainCarry:
        return start_training(model, client_opt, broadcast.model)

    def finish(carry: TrainCarry, broadcast, client_control) -> ClientOutput:
        delta = jax.tree.map(jnp.subtract, carry.weights.trainable, broadcast.model.trainable)
        steps = carry.num_steps.astype(jnp.float32)
        new_control = jax.tree.map(
            lambda ci, c, d: jnp.where(steps > 0, ci - c - d / (jnp.maximum(steps, 1.0) * lr), ci),
            client_control,
            broadcast.algorithm_state,
            delta,
        )
        return ClientOutput(
            update={
                "delta": delta,
                "control": jax.tree.map(jnp.subtract, new_control, client_control),
            },
            weight=client_weight(carry.num_examples, weighting),
            metrics=carry.metrics,
            loss_sum=carry.loss_sum,
            num_examples=carry.num_examples,
            client_state=new_control,
        )

    def server_update(state, aggregate, key):
        del key
        state = pseudo_gradient_step(server_opt, state, aggregate["delta"])
        population = state.client_states.population_size
        control = jax.tree.map(
            lambda c, s: c + s / population, state.algorithm_state, aggregate["control"]
        )
        return state.replace(algorithm_state=control), {}

    zeros = lambda weights: jax.tree.map(jnp.zeros_like, weights.trainable)  # noqa: E731
    algorithm = FederatedAlgorithm(
        name="scaffold",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: (server_opt.init(weights.trainable), zeros(weights)),
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "control": sum_aggregator()}),
        client_state_init=zeros,
    )
    return FederatedProcess(model, algorithm, population_size=population_size, **engine_options)
