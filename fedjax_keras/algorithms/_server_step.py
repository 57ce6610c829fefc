"""The server step most algorithms share: their optimizer on the pseudo-gradient.

FedOpt's view of FedAvg (Reddi et al. 2021, arXiv:2003.00295): the server
treats the aggregated client delta as the negative of a gradient and steps its
optimizer on ``-aggregate``; with ``optax.sgd(1.0)`` that is ``w + mean(d_k)``,
McMahan et al.'s averaging.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras.models import ModelWeights
from fedjax_keras.optimizers import Optimizer, as_optimizer


def server_optimizer_for(server_optimizer, template, default_learning_rate: float = 1.0):
    """``server_optimizer`` as an `Optimizer` over ``template``; None is plain SGD.

    Args:
      server_optimizer: anything `as_optimizer` accepts, or None.
      template: the weights it updates (for Keras optimizers).
      default_learning_rate: the rate of ``optax.sgd`` when None is given
        (1.0: the server takes the clients' mean).
    """
    if server_optimizer is None:
        server_optimizer = optax.sgd(default_learning_rate)
    return as_optimizer(server_optimizer, template, argument="server_optimizer")


def pseudo_gradient_step(server_optimizer: Optimizer, state, mean_delta):
    """``state`` with the server optimizer stepped on ``-mean_delta`` (trainable weights)."""
    pseudo_gradient = jax.tree.map(jnp.negative, mean_delta)
    trainable, optimizer_state = server_optimizer.update(
        pseudo_gradient, state.optimizer_state, state.model.trainable
    )
    return state.replace(
        model=ModelWeights(trainable, state.model.non_trainable), optimizer_state=optimizer_state
    )


def init_server_optimizer(server_optimizer: Optimizer):
    """``server_init`` of an algorithm with no server state besides its optimizer's."""
    return lambda weights: (server_optimizer.init(weights.trainable), ())


def plain_server_update(server_optimizer: Optimizer):
    """``server_update`` that steps on the aggregate (the mean delta) and reports nothing."""

    def server_update(state, mean_delta, key):
        del key
        return pseudo_gradient_step(server_optimizer, state, mean_delta), {}

    return server_update


def step_and_report(server_optimizer: Optimizer, report):
    """``server_update`` stepping on ``aggregate['delta']`` and reporting ``report(aggregate)``.

    For the algorithms whose aggregate also carries sums to report (Ditto's
    and APFL's personal-model metrics) besides the delta the server steps on.
    """

    def server_update(state, aggregate, key):
        del key
        return pseudo_gradient_step(server_optimizer, state, aggregate["delta"]), report(aggregate)

    return server_update
