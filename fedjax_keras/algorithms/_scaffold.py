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

from fedjax_keras.aggregation import Aggregator, by_key
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_number
from fedjax_keras.algorithms._server_step import pseudo_gradient_step, server_optimizer_for
from fedjax_keras.algorithms._weighting import ClientWeighting, as_client_weighting, client_weight
from fedjax_keras.client import (
    ClientOutput,
    ClientProgram,
    TrainCarry,
    start_training,
    training_step,
)
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model
from fedjax_keras.optimizers import from_optax


def scaffold(
    model: Model,
    client_learning_rate: float,
    server_optimizer=None,
    *,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """SCAFFOLD (Karimireddy et al. 2020, arXiv:1910.06378, option II) as a `FederatedAlgorithm`.

    ``N``, the population size, is the rows of the state's client table: the
    engine option ``population_size`` of the `FederatedProcess` that runs it
    (None: the first cohort's population). Each client's ``c_i`` is its row.

    Args:
      model: from `from_keras_model`.
      client_learning_rate: the local SGD learning rate (> 0; the option II
        control-variate update assumes plain SGD).
      server_optimizer: applied to ``-aggregate(delta)``; default ``optax.sgd(1.0)``.
      weighting: `ClientWeighting` (or its value) of the model deltas.
      aggregator: combines the model deltas (default: the weighted mean); the
        control-variate deltas are always summed.

    Example:
      >>> process = FederatedProcess(model, scaffold(model, 0.05),
      ...                            population_size=data.num_clients, batch_size=10)
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    lr = check_number(client_learning_rate, "client_learning_rate", minimum=0.0, strict=True)
    delta_aggregator = aggregator_or_default(aggregator)
    server_opt = server_optimizer_for(server_optimizer, model.initial_weights.trainable)

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
        control_delta = jax.tree.map(jnp.subtract, new_control, client_control)
        return ClientOutput.from_training(
            carry,
            {"delta": delta, "control": control_delta},
            client_weight(carry.num_examples, weighting),
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
    return FederatedAlgorithm(
        name="scaffold",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: (server_opt.init(weights.trainable), zeros(weights)),
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "control": sum_aggregator()}),
        client_state_init=zeros,
    )


@process_builder(scaffold, shown_engine_options=("population_size",))
def build_scaffold(*args, **kwargs) -> FederatedProcess:
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
