"""Learning-rate schedules across rounds, evaluated inside the compiled programs.

Server side: the server optimizer steps once per applied round, so an optax
schedule given as its learning rate (``optax.sgd(optax.exponential_decay(...))``)
is indexed by the round already (by the number of applied server updates:
a round in which no client counted, or whose update was not finite and was
rejected, does not advance it).

Client side: a client optimizer is created afresh for every client of every
round, so an optax schedule inside it would be indexed by the local step.
To index by the round, a builder takes ``client_learning_rate_schedule``
(``round -> learning rate``, e.g. an optax schedule) and ``client_optimizer``
becomes a function ``learning rate -> optax transform`` (``optax.sgd``,
``lambda lr: optax.sgd(lr, momentum=0.9)``): TFF's
``build_weighted_fed_avg_with_optimizer_schedule(client_learning_rate_fn,
client_optimizer_fn)``. The round number travels in the broadcast
(`RoundBroadcast`), the learning rate is computed from it inside the client
program and the optimizer is built there from a traced learning rate, so no
round recompiles anything.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_keras.client import with_hyperparams
from fedjax_keras.engine import default_broadcast
from fedjax_keras.models import ModelWeights
from fedjax_keras.optimizers import Optimizer, as_optimizer, from_optax


class RoundBroadcast(NamedTuple):
    """What clients receive when something depends on the round number.

    Attributes:
      model: the server's `ModelWeights`.
      algorithm_state: the algorithm's server state.
      round_num: int32 scalar, the round being run (0 for the first).
    """

    model: ModelWeights
    algorithm_state: Any
    round_num: jax.Array


def broadcast_with_round(state) -> RoundBroadcast:
    """The server model, the algorithm state and the round number (a traced int32 array)."""
    round_num = jnp.asarray(state.round_num, jnp.int32)
    return RoundBroadcast(state.model, state.algorithm_state, round_num)


class ClientSchedule(NamedTuple):
    """A client optimizer whose learning rate follows the rounds.

    Attributes:
      learning_rate_fn: ``round (int32 array) -> learning rate`` (an optax schedule).
      optimizer_fn: ``learning rate -> optax.GradientTransformation``.
    """

    learning_rate_fn: Callable[[jax.Array], Any]
    optimizer_fn: Callable[[Any], optax.GradientTransformation]

    def at(self, round_num) -> Optimizer:
        """The client `Optimizer` of round ``round_num`` (which may be a traced array)."""
        return from_optax(self.optimizer_fn(self.learning_rate_fn(round_num)))


def client_schedule(optimizer_fn, learning_rate_fn) -> ClientSchedule:
    """Checks the pair at build time (outside jit) and returns a `ClientSchedule`.

    Raises:
      TypeError: when ``learning_rate_fn`` is not callable, or ``optimizer_fn``
        does not turn a learning rate into an optax transform (a Keras
        optimizer cannot take a traced learning rate).
    """
    if not callable(learning_rate_fn):
        raise TypeError(
            "client_learning_rate_schedule must be a function round -> learning rate (an "
            "optax schedule such as optax.exponential_decay(0.1, 1, 0.99)); received "
            f"{learning_rate_fn!r}."
        )
    example = None
    if callable(optimizer_fn):
        try:
            example = optimizer_fn(jnp.float32(learning_rate_fn(jnp.int32(0))))
        except Exception:  # noqa: BLE001 - any failure is reported with the fix below.
            example = None
    if not isinstance(example, optax.GradientTransformation):
        raise TypeError(
            "With client_learning_rate_schedule, client_optimizer must be a function "
            "learning rate -> optax transform, called inside the compiled program with the "
            "round's learning rate: e.g. optax.sgd or lambda lr: optax.sgd(lr, momentum=0.9); "
            f"received {optimizer_fn!r}. (Keras optimizers cannot take a traced learning rate.)"
        )
    return ClientSchedule(learning_rate_fn, optimizer_fn)


def client_optimizer_source(client_optimizer, schedule, template):
    """``(optimizer_for, broadcast)``: how a client program gets its optimizer.

    Args:
      client_optimizer: anything `as_optimizer` accepts; with a ``schedule``, a
        function ``learning rate -> optax transform``.
      schedule: None, or ``round -> learning rate``.
      template: the trainable weights (for Keras optimizers).

    Returns:
      ``optimizer_for(broadcast) -> Optimizer`` (called inside the client
      program) and the algorithm's ``broadcast(state)`` function
      (`broadcast_with_round` with a schedule, the default otherwise).
    """
    if schedule is None:
        optimizer = as_optimizer(client_optimizer, template, argument="client_optimizer")
        return (lambda broadcast: optimizer), default_broadcast
    scheduled = client_schedule(client_optimizer, schedule)
    return (lambda broadcast: scheduled.at(broadcast.round_num)), broadcast_with_round


def run_hyperparams(broadcast):
    """The client hyper-parameters a sweep gives each run (``Broadcast.hyperparams``), or None.

    Passed to `start_training`, they set an ``optax.inject_hyperparams`` client
    optimizer's learning rate per run (`fedjax_keras.sweep`); outside a sweep
    there are none, and nothing changes.
    """
    return getattr(broadcast, "hyperparams", None)


def init_for_run(optimizer: Optimizer, params, broadcast):
    """``optimizer.init(params)`` with the run's client hyper-parameters (see `run_hyperparams`)."""
    state = optimizer.init(params)
    hyperparams = run_hyperparams(broadcast)
    return with_hyperparams(state, hyperparams) if hyperparams else state
