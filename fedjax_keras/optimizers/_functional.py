"""One functional optimizer interface for optax transforms and Keras optimizers.

The engine only sees `Optimizer(init, update)`: pure functions over parameter
pytrees, so optimizer state can be vmapped over clients and skipped on padded
steps with `jnp.where`.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import optax

Params = Any
OptState = Any


class Optimizer(NamedTuple):
    """A pure optimizer.

    Attributes:
      init: ``(params) -> state``.
      update: ``(grads, state, params) -> (new_params, new_state)``.
    """

    init: Callable[[Params], OptState]
    update: Callable[[Params, OptState, Params], tuple[Params, OptState]]


def from_optax(transform: optax.GradientTransformation) -> Optimizer:
    """Wraps an optax gradient transformation (e.g. ``optax.sgd(0.1)``)."""

    def update(grads, state, params):
        updates, new_state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), new_state

    return Optimizer(transform.init, update)
