"""FedProx: FedAvg with a proximal term keeping clients near the server model.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
arXiv:1812.06127. Each client minimises ``loss(w) + mu / 2 * ||w - w_server||^2``;
with ``mu = 0`` it is exactly FedAvg.
"""

import jax

from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import check_number
from fedjax_keras.algorithms._fed_avg import fed_avg
from fedjax_keras.algorithms._weighting import ClientWeighting
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess
from fedjax_keras.models import Model


def proximal_term(mu: float):
    """A `GradCorrection` adding ``mu (w - w_server)``: the pull toward the server weights."""

    def proximal(grads, trainable, context):
        broadcast, _ = context
        return jax.tree.map(
            lambda g, w, w0: g + mu * (w - w0), grads, trainable, broadcast.model.trainable
        )

    return proximal


def fed_prox(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    mu: float,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    non_trainable: str = "broadcast",
    aggregator: Aggregator | None = None,
    client_learning_rate_schedule=None,
) -> FederatedAlgorithm:
    """FedProx (Li et al. 2020, arXiv:1812.06127) as a `FederatedAlgorithm`.

    Every local step follows ``grad loss(w) + mu (w - w_server)``; the rest
    is `fed_avg`'s.

    Args:
      model, client_optimizer, server_optimizer: as in `fed_avg`.
      mu: proximal strength, >= 0.
      weighting, non_trainable, aggregator, client_learning_rate_schedule: as in `fed_avg`.

    Example:
      >>> process = FederatedProcess(model, fed_prox(model, optax.sgd(0.1), mu=0.01),
      ...                            runner="sequential", batch_size=10)
    """
    mu = check_number(mu, "mu", minimum=0.0)
    algorithm = fed_avg(
        model,
        client_optimizer,
        server_optimizer,
        weighting=weighting,
        non_trainable=non_trainable,
        aggregator=aggregator,
        client_learning_rate_schedule=client_learning_rate_schedule,
        grad_correction=proximal_term(mu),
    )
    return algorithm._replace(name="fed_prox")


@process_builder(fed_prox)
def build_fed_prox(*args, **kwargs) -> FederatedProcess:
    """FedProx with proximal strength ``mu`` (TFF: ``build_weighted_fed_prox``).

    Args:
      model, client_optimizer, server_optimizer: as in `build_weighted_fed_avg`.
      mu: proximal strength, >= 0.
      weighting: 'num_examples' or 'uniform'.
      non_trainable: 'broadcast', 'average' or 'per_client'.
      aggregator: combines the clients' deltas (default: the weighted mean).
      client_learning_rate_schedule: None, or ``round -> client learning
        rate``; then ``client_optimizer`` is ``learning rate -> optax
        transform`` (see `build_weighted_fed_avg`).
      **engine_options: see `build_weighted_fed_avg`.
    """
