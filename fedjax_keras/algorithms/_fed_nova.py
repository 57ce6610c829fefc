"""FedNova: normalised averaging, so clients with more local steps do not pull harder.

Wang et al., "Tackling the Objective Inconsistency Problem in Heterogeneous
Federated Optimization", NeurIPS 2020, arXiv:2007.07481. Client ``i`` runs
``tau_i`` local SGD steps (its real steps this round: clients differ in data
and so in steps) from the server weights ``x``. Its displacement is
``x - y_i = lr * sum_k a_ik * g_ik``: a weighted sum of its gradients, the
weights ``a_i`` set by the local solver. FedNova divides by ``||a_i||_1``
and rescales by the weighted mean of those norms:

    d_i     = (y_i - x) / ||a_i||_1          (normalised update)
    tau_eff = sum_i p_i * ||a_i||_1
    x      <- x + tau_eff * sum_i p_i * d_i   (through the server optimizer)

with ``p_i = n_i / n`` (example weights). ``||a_i||_1`` for the local solvers
of the paper (Section 4):

- plain SGD: ``tau_i``; with equal ``tau_i`` FedNova is FedAvg;
- SGD with momentum ``rho``: ``(tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)``;
- with a proximal term ``mu`` (FedProx): ``(1 - (1 - lr mu)^tau_i) / (lr mu)``.

Here ``||a_i||_1`` is computed for any mix of the two by running the solver's
linear recurrence on all-ones gradients for ``tau_i`` steps (``v <- rho v + 1
- lr mu e``, ``e <- e + v``; ``||a||_1 = e``), which reproduces each closed
form above.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras._numbers import is_real
from fedjax_keras.aggregation import Aggregator, by_key, mean
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default
from fedjax_keras.algorithms._fed_prox import proximal_term
from fedjax_keras.algorithms._optimizers import delta_optimizers
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


def solver_norm(num_steps, learning_rate, momentum: float, mu: float) -> jax.Array:
    """``||a||_1`` of ``num_steps`` local steps of SGD (momentum, proximal ``mu``).

    The sum of the coefficients of the gradients in ``(x - y) / lr``: the
    solver run on gradients all equal to 1.

    Args:
      num_steps: int scalar (may be traced).
      learning_rate: float scalar (may be traced; used only when ``mu > 0``).
      momentum: ``rho`` in [0, 1).
      mu: proximal strength >= 0.
    """
    shrink = jnp.asarray(learning_rate, jnp.float32) * mu

    def body(_, carry):
        velocity, displacement = carry
        velocity = momentum * velocity + 1.0 - shrink * displacement
        return velocity, displacement + velocity

    zero = jnp.zeros((), jnp.float32)
    _, norm = jax.lax.fori_loop(0, num_steps, body, (zero, zero))
    return norm


def _check(value, name, low, high=None):
    if not is_real(value) or not value >= low or (high is not None and not value < high):
        bound = f"in [{low}, {high})" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be a number {bound}; received {value!r}.")
    return float(value)


def fed_nova(
    model: Model,
    client_learning_rate,
    server_optimizer=None,
    *,
    momentum: float = 0.0,
    mu: float = 0.0,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """FedNova (Wang et al. 2020, arXiv:2007.07481) as a `FederatedAlgorithm`.

    ``x <- x + tau_eff * sum_i p_i (y_i - x) / ||a_i||_1`` (module docstring).

    Args:
      model: from `from_keras_model`.
      client_learning_rate: the local SGD rate ``lr``: a float, or an optax
        schedule ``round -> rate``.
      server_optimizer: applied to ``-tau_eff * mean(d_i)``; default ``optax.sgd(1.0)``.
      momentum: local SGD momentum ``rho`` in [0, 1).
      mu: local proximal strength (FedProx), >= 0.
      weighting: ``p_i``, a `ClientWeighting` (or its value).
      aggregator: combines the normalised updates ``d_i`` (default: the weighted mean).

    Example:
      >>> process = FederatedProcess(model, fed_nova(model, 0.05), batch_size=10)
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    momentum = _check(momentum, "momentum", 0.0, 1.0)
    mu = _check(mu, "mu", 0.0)
    if not callable(client_learning_rate):
        _check(client_learning_rate, "client_learning_rate", 0.0)
    schedule = client_learning_rate if callable(client_learning_rate) else None
    rate_at = schedule if schedule is not None else (lambda round_num: client_learning_rate)
    make_sgd = lambda lr: optax.sgd(lr, momentum=momentum or None)  # noqa: E731
    client_sgd = make_sgd if schedule is not None else make_sgd(client_learning_rate)
    client_opt, broadcast_fn, server_opt = delta_optimizers(
        model, client_sgd, schedule, server_optimizer
    )
    delta_aggregator = aggregator_or_default(aggregator)
    proximal = proximal_term(mu)

    def start(broadcast, client_state) -> TrainCarry:
        return start_training(model, client_opt(broadcast), broadcast.model)

    def step(carry: TrainCarry, batch, key, broadcast, client_state) -> TrainCarry:
        local = training_step(model, client_opt(broadcast), proximal if mu else None)
        return local(carry, batch, key, broadcast, client_state)

    def finish(carry: TrainCarry, broadcast, client_state) -> ClientOutput:
        round_num = getattr(broadcast, "round_num", 0)
        norm = solver_norm(carry.num_steps, rate_at(round_num), momentum, mu)
        safe = jnp.where(norm > 0, norm, 1.0)
        normalised = jax.tree.map(
            lambda y, x: jnp.where(norm > 0, (y - x) / safe, 0.0),
            carry.weights.trainable,
            broadcast.model.trainable,
        )
        weight = client_weight(carry.num_examples, weighting)
        return ClientOutput.from_training(carry, {"normalized": normalised, "norm": norm}, weight)

    def server_update(state, aggregate, key):
        del key
        tau_eff = aggregate["norm"]
        delta = jax.tree.map(lambda d: tau_eff * d, aggregate["normalized"])
        return pseudo_gradient_step(server_opt, state, delta), {"tau_eff": tau_eff}

    return FederatedAlgorithm(
        name="fed_nova",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: (server_opt.init(weights.trainable), ()),
        server_update=server_update,
        aggregator=by_key({"normalized": delta_aggregator, "norm": mean()}),
        broadcast=broadcast_fn,
    )


@process_builder(fed_nova)
def build_fed_nova(*args, **kwargs) -> FederatedProcess:
    """FedNova (Wang et al. 2020, arXiv:2007.07481) with local SGD (momentum, proximal term).

    The update rule is in the module docstring: ``x <- x + tau_eff * sum_i p_i
    (y_i - x) / ||a_i||_1``, ``tau_eff = sum_i p_i ||a_i||_1``.

    Args:
      model: from `from_keras_model`.
      client_learning_rate: the local SGD rate ``lr``: a float, or an optax
        schedule ``round -> rate`` evaluated at the round inside the compiled
        program.
      server_optimizer: applied to ``-tau_eff * mean(d_i)``; default
        ``optax.sgd(1.0)``.
      momentum: local SGD momentum ``rho`` in [0, 1) (``optax.sgd``'s).
      mu: local proximal strength (FedProx), >= 0.
      weighting: ``p_i``: 'num_examples' (the paper's ``n_i / n``) or 'uniform'.
      aggregator: combines the normalised updates ``d_i`` (default: the
        weighted mean); ``tau_eff`` always takes the weighted mean.
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`; its rounds report ``tau_eff``.

    Example:
      >>> process = build_fed_nova(model, 0.05, batch_size=10)
    """
