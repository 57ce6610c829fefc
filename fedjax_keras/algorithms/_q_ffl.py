"""q-FFL (q-FedAvg): fairer accuracy across clients by weighting high-loss clients more.

Li, Sanjabi, Beirami and Smith, "Fair Resource Allocation in Federated
Learning", ICLR 2020, arXiv:1905.10497 (Algorithm 3, q-FedAvg). It minimizes
``sum_k p_k F_k(w)^(q + 1) / (q + 1)``: ``q = 0`` is FedAvg's objective, a
larger ``q`` puts more weight on the clients with the highest loss.

A round with server weights ``w``: client ``k`` runs local SGD of rate
``eta`` over its batches from ``w`` to ``w_k`` (as FedAvg) and, in the same
pass, sums the loss of ``w`` itself on its batches (inference mode):
``F_k`` is that mean. With the Lipschitz estimate ``L = 1 / eta``:

    dw_k    = L (w - w_k)
    Delta_k = F_k^q dw_k
    h_k     = q F_k^(q - 1) ||dw_k||^2 + L F_k^q
    w      <- w - sum_k Delta_k / sum_k h_k

``F_k`` is floored at 1e-10 so that ``F_k^(q - 1)`` stays finite. ``q = 0``
gives ``w - mean_k(w - w_k)``: FedAvg with every client weighted equally. The
server applies ``-sum Delta / sum h`` with its optimizer (``optax.sgd(1.0)``,
the default, is the paper's step). ``sum_k Delta_k`` goes through
``aggregator`` (default `fedjax_keras.aggregation.sum`), ``sum_k h_k`` through
a plain sum.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras.aggregation import Aggregator, by_key, safe_divide
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_number
from fedjax_keras.algorithms._metric_sums import add_batch, empty_sums
from fedjax_keras.algorithms._server_step import (
    init_server_optimizer,
    pseudo_gradient_step,
    server_optimizer_for,
)
from fedjax_keras.client import (
    ClientOutput,
    ClientProgram,
    start_training,
    training_step,
    with_float_mask,
)
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model
from fedjax_keras.optimizers import from_optax

_LOSS_FLOOR = 1e-10


def q_ffl(
    model: Model,
    client_learning_rate: float,
    server_optimizer=None,
    *,
    q: float = 1.0,
    lipschitz: float | None = None,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """q-FedAvg (Li et al. 2020, arXiv:1905.10497) as a `FederatedAlgorithm`.

    ``w <- w - sum_k Delta_k / sum_k h_k`` with ``Delta_k = F_k^q L (w - w_k)``
    (module docstring); ``q = 0`` is unweighted FedAvg.

    Args:
      model: from `from_keras_model`.
      client_learning_rate: ``eta``, the local SGD rate.
      server_optimizer: applied to ``sum Delta / sum h`` as a pseudo-gradient;
        default ``optax.sgd(1.0)`` (the paper's update).
      q: ``q >= 0``, the fairness exponent.
      lipschitz: ``L``; default ``1 / client_learning_rate`` (the paper's).
      aggregator: sums the ``Delta_k`` (default: `fedjax_keras.aggregation.sum`).

    Example:
      >>> process = FederatedProcess(model, q_ffl(model, 0.05, q=1.0), batch_size=10)
    """
    require_model(model)
    lr = check_number(client_learning_rate, "client_learning_rate", minimum=0.0, strict=True)
    q = check_number(q, "q", minimum=0.0)
    lip = (
        1.0 / lr
        if lipschitz is None
        else check_number(lipschitz, "lipschitz", minimum=0.0, strict=True)
    )
    delta_aggregator = aggregator_or_default(aggregator, default=sum_aggregator)
    server_opt = server_optimizer_for(server_optimizer, model.initial_weights.trainable)
    sgd = from_optax(optax.sgd(lr))
    train_step = training_step(model, sgd)

    def start(broadcast, client_state):
        return start_training(model, sgd, broadcast.model), empty_sums(model)

    def step(carry, batch, key, broadcast, client_state):
        train, at_server = carry
        scored = with_float_mask(batch)
        return (
            train_step(train, batch, key, broadcast, client_state),
            add_batch(model, at_server, broadcast.model, scored),
        )

    def finish(carry, broadcast, client_state) -> ClientOutput:
        train, at_server = carry
        count = jnp.maximum(at_server.num_examples, 1).astype(jnp.float32)
        loss = jnp.maximum(at_server.loss_sum / count, _LOSS_FLOOR)
        dw = jax.tree.map(
            lambda w, wk: lip * (w - wk), broadcast.model.trainable, train.weights.trainable
        )
        sq_norm = jax.tree.reduce(jnp.add, jax.tree.map(lambda d: jnp.sum(d * d), dw))
        h = q * loss ** (q - 1.0) * sq_norm + lip * loss**q
        return ClientOutput.from_training(
            train,
            {"delta": jax.tree.map(lambda d: loss**q * d, dw), "h": h},
            jnp.ones((), jnp.float32),
            report={"start_loss": at_server.loss_sum / count},
        )

    def server_update(state, aggregate, key):
        del key
        step = safe_divide(aggregate["delta"], aggregate["h"])
        # w - sum Delta / sum h: the pseudo-gradient step takes the mean delta's sign.
        return pseudo_gradient_step(server_opt, state, jax.tree.map(jnp.negative, step)), {}

    return FederatedAlgorithm(
        name="q_ffl",
        client_program=ClientProgram(start, step, finish),
        server_init=init_server_optimizer(server_opt),
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "h": sum_aggregator()}),
    )


@process_builder(q_ffl)
def build_q_ffl(*args, **kwargs) -> FederatedProcess:
    """q-FedAvg (Li et al. 2020, arXiv:1905.10497).

    Returns:
      A `FederatedProcess`; its metrics are FedAvg's plus, per client,
      ``clients/start_loss``: ``F_k``, the loss of the round's server model.

    Example:
      >>> process = build_q_ffl(model, 0.05, q=1.0, batch_size=10)
      >>> out = process.next(process.initialize(0), data.sample_clients(5, seed=0))
      >>> out.metrics["clients/start_loss"].shape
      (5,)
    """
