"""FedDyn: dynamic regularisation aligns the clients' minima with the global one.

Acar et al., "Federated Learning Based on Dynamic Regularization", ICLR 2021,
arXiv:2111.04263, Algorithm 1. Each client ``k`` keeps ``g_k``, its last
local gradient state (zero for a client never seen), in the state's client
table; the server keeps ``h``. In round ``t``, from the server weights ``x``:

    client k:  y_k ~ argmin  L_k(y) - <g_k, y> + alpha / 2 ||y - x||^2
               (local steps on grad L_k(y) - g_k + alpha (y - x))
               g_k <- g_k - alpha (y_k - x)
    server:    h   <- h - alpha / m * sum_{k in cohort} (y_k - x)
               x   <- mean_k(y_k) - h / alpha

``m`` is the population size (the client table's rows). The server's last
line is taken through the server optimizer as the pseudo-gradient step
``x <- x + (mean_k(y_k - x) - h / alpha)``: ``optax.sgd(1.0)`` (the
default) is the paper's rule.

``h / alpha = -(1/m) * sum over all past rounds and clients of (y_k - x)``
does not depend on ``alpha``: as ``alpha -> 0`` the clients run plain local
SGD (FedAvg's) but the server still adds that running mean of past deltas,
so FedDyn does not reduce to FedAvg (the tests check both facts).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._numbers import is_real
from fedjax_keras.aggregation import Aggregator, by_key
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default
from fedjax_keras.algorithms._optimizers import delta_optimizers
from fedjax_keras.algorithms._schedules import run_hyperparams
from fedjax_keras.algorithms._server_step import pseudo_gradient_step
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


class FedDynState(NamedTuple):
    """FedDyn's server state.

    Attributes:
      h: pytree like the trainable weights: the server's drift estimate.
    """

    h: object


def fed_dyn(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    alpha: float = 0.01,
    weighting: ClientWeighting | str = ClientWeighting.UNIFORM,
    aggregator: Aggregator | None = None,
    client_learning_rate_schedule=None,
) -> FederatedAlgorithm:
    """FedDyn (Acar et al. 2021, arXiv:2111.04263) as a `FederatedAlgorithm`.

    The rule is in the module docstring. ``m``, the population size, is the
    rows of the state's client table: the engine option ``population_size``
    of the `FederatedProcess` that runs it (None: the first cohort's).

    Args:
      model: from `from_keras_model`.
      client_optimizer: the local solver (as in `fed_avg`).
      server_optimizer: applied to ``-(mean(y_k - x) - h / alpha)``; default ``optax.sgd(1.0)``.
      alpha: the regularisation strength, > 0.
      weighting: for ``mean(y_k)``: `ClientWeighting` (or its value); uniform is the paper's.
      aggregator: combines the deltas ``y_k - x`` into the mean (default: the weighted mean).
      client_learning_rate_schedule: see `build_weighted_fed_avg`.

    Example:
      >>> process = FederatedProcess(model, fed_dyn(model, optax.sgd(0.05), alpha=0.01),
      ...                            population_size=data.num_clients, batch_size=10)
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    if not is_real(alpha) or not alpha > 0:
        raise ValueError(
            f"alpha must be a number > 0 (FedDyn divides by it); received {alpha!r}. For "
            "local training without the dynamic regulariser use build_weighted_fed_avg."
        )
    alpha = float(alpha)
    client_opt, broadcast_fn, server_opt = delta_optimizers(
        model, client_optimizer, client_learning_rate_schedule, server_optimizer
    )
    delta_aggregator = aggregator_or_default(aggregator)

    def dynamic(grads, trainable, context):
        broadcast, gradient_state = context
        return jax.tree.map(
            lambda g, gk, y, x: g - gk + alpha * (y - x),
            grads,
            gradient_state,
            trainable,
            broadcast.model.trainable,
        )

    def start(broadcast, gradient_state) -> TrainCarry:
        return start_training(
            model, client_opt(broadcast), broadcast.model, run_hyperparams(broadcast)
        )

    def step(carry: TrainCarry, batch, key, broadcast, gradient_state) -> TrainCarry:
        local = training_step(model, client_opt(broadcast), dynamic)
        return local(carry, batch, key, broadcast, gradient_state)

    def finish(carry: TrainCarry, broadcast, gradient_state) -> ClientOutput:
        delta = jax.tree.map(jnp.subtract, carry.weights.trainable, broadcast.model.trainable)
        return ClientOutput.from_training(
            carry,
            {"delta": delta, "sum": delta},
            client_weight(carry.num_examples, weighting),
            client_state=jax.tree.map(lambda gk, d: gk - alpha * d, gradient_state, delta),
        )

    def server_update(state, aggregate, key):
        del key
        population = state.client_states.population_size
        h = jax.tree.map(
            lambda h, s: h - alpha / population * s, state.algorithm_state.h, aggregate["sum"]
        )
        step = jax.tree.map(lambda d, h: d - h / alpha, aggregate["delta"], h)
        state = pseudo_gradient_step(server_opt, state, step)
        norm = jnp.sqrt(jax.tree.reduce(jnp.add, jax.tree.map(lambda a: jnp.sum(a**2), h)))
        return state.replace(algorithm_state=FedDynState(h)), {"h_norm": norm}

    zeros = lambda weights: jax.tree.map(jnp.zeros_like, weights.trainable)  # noqa: E731
    return FederatedAlgorithm(
        name="fed_dyn",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: (
            server_opt.init(weights.trainable),
            FedDynState(zeros(weights)),
        ),
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "sum": sum_aggregator()}),
        broadcast=broadcast_fn,
        client_state_init=zeros,
    )


@process_builder(fed_dyn, shown_engine_options=("population_size",))
def build_fed_dyn(*args, **kwargs) -> FederatedProcess:
    """FedDyn (Acar et al. 2021, arXiv:2111.04263); the rule is in the module docstring.

    Args:
      model: from `from_keras_model`.
      client_optimizer: the local solver, as in `build_weighted_fed_avg`
        (the paper uses SGD); it steps on ``grad L_k(y) - g_k + alpha (y - x)``.
      server_optimizer: applied to ``-(mean(y_k - x) - h / alpha)``; default
        ``optax.sgd(1.0)``, the paper's ``x <- mean(y_k) - h / alpha``.
      alpha: the regularisation strength, > 0 (the paper tries 1e-1 to 1e-3).
      population_size: ``m``, the clients of the population (the client
        table's rows); None: the first cohort's population.
      weighting: for ``mean(y_k)``: 'uniform' (the paper's) or 'num_examples'.
      aggregator: combines the deltas ``y_k - x`` into the mean (default: the
        weighted mean); ``h`` always takes their plain sum over the cohort.
      client_learning_rate_schedule: see `build_weighted_fed_avg`.
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess` whose state keeps ``h`` (``state.algorithm_state.h``)
      and each client's ``g_k`` (``state.client_states``); its rounds report
      ``h_norm``.

    Example:
      >>> process = build_fed_dyn(model, optax.sgd(0.05), alpha=0.01, batch_size=10,
      ...     population_size=data.num_clients)
    """
