"""FedProx: FedAvg with a proximal term keeping clients near the server model.

Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020,
arXiv:1812.06127. Each client minimises ``loss(w) + mu / 2 * ||w - w_server||^2``;
with ``mu = 0`` it is exactly FedAvg.
"""

import jax

from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._fed_avg import default_server_optimizer, fed_avg_algorithm
from fedjax_keras.engine import FederatedProcess
from fedjax_keras.models import Model


def build_fed_prox(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    mu: float,
    weighting: str = "num_examples",
    non_trainable: str = "broadcast",
    aggregator: Aggregator | None = None,
    client_learning_rate_schedule=None,
    **engine_options,
) -> FederatedProcess:
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
    if isinstance(mu, bool) or not isinstance(mu, (int, float)) or not mu >= 0:
        raise ValueError(f"mu must be a number >= 0; received {mu!r}.")
    mu = float(mu)

    def proximal(grads, trainable, context):
        broadcast, _ = context
        return jax.tree.map(
            lambda g, w, w0: g + mu * (w - w0), grads, trainable, broadcast.model.trainable
        )

    algorithm = fed_avg_algorithm(
        model,
        client_optimizer,
        default_server_optimizer(server_optimizer),
        weighting=weighting,
        non_trainable=non_trainable,
        grad_correction=proximal,
        aggregator=aggregator,
        client_learning_rate_schedule=client_learning_rate_schedule,
        name="fed_prox",
    )
    return FederatedProcess(model, algorithm, **engine_options)
