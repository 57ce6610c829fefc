"""The client and server optimizers of the algorithms that average client deltas.

FedAvg, FedNova, FedDyn and FedBuff take a client optimizer (or a schedule
over rounds) and a server optimizer the same way; `delta_optimizers` turns
the user's arguments into the `Optimizer` pair and the broadcast the client
program needs, once, at the factory.
"""

from typing import Any, NamedTuple

from fedjax_keras.algorithms._schedules import client_optimizer_source
from fedjax_keras.algorithms._server_step import server_optimizer_for
from fedjax_keras.models import Model


class DeltaOptimizers(NamedTuple):
    """What `delta_optimizers` returns.

    Attributes:
      client: ``broadcast -> Optimizer``, called inside the client program.
      broadcast: the algorithm's ``broadcast(state)`` (with the round when a
        schedule needs it).
      server: the server `Optimizer` over the trainable weights.
    """

    client: Any
    broadcast: Any
    server: Any


def delta_optimizers(
    model: Model, client_optimizer, client_learning_rate_schedule, server_optimizer
) -> DeltaOptimizers:
    """The `DeltaOptimizers` of ``model``'s trainable weights.

    Args:
      model: from `from_keras_model`.
      client_optimizer: anything `as_optimizer` accepts; with a schedule, a
        function ``learning rate -> optax transform``.
      client_learning_rate_schedule: None, or ``round -> learning rate``.
      server_optimizer: anything `as_optimizer` accepts; None is ``optax.sgd(1.0)``.
    """
    template = model.initial_weights.trainable
    client, broadcast = client_optimizer_source(
        client_optimizer, client_learning_rate_schedule, template
    )
    return DeltaOptimizers(client, broadcast, server_optimizer_for(server_optimizer, template))
