"""FedBuff: buffered asynchronous aggregation, simulated round by round with staleness.

Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation",
AISTATS 2022, arXiv:2106.06639, Algorithm 1. In the real system clients
train concurrently on whatever model version they downloaded; the server
adds each arriving update, down-weighted by its staleness ``tau`` (server
versions published since the client's download), to a buffer, and once
``K`` updates are in it steps ``x <- x + lr * (1/K) sum_i s(tau_i) delta_i``
with ``s(tau) = (1 + tau)^(-a)`` (the paper's ``1 / sqrt(1 + tau)``:
``a = 1/2``).

The simulation here: one round is one buffer flush, ``K`` is the cohort
size. The server keeps the last ``S = max_staleness`` model versions in its
state. Each client of the round draws its staleness ``tau`` from
``staleness_probs`` (over ``0..S``, renormalised over the versions that exist
yet), deterministically from the run's seed, the round and the client (its
first step's key); it trains from version ``x_{t - tau}`` and sends
``s(tau) * (y - x_{t - tau})``; the aggregate is the mean over the cohort
(uniform by default, as the paper's ``1/K``), applied to the current model
through the server optimizer; the new model joins the versions.

What it reproduces: updates computed from stale models, applied to the
current one; the staleness weighting; ``K`` updates per server step; and so
the effect of the staleness distribution on convergence, exactly repeatable.

What it does not: staleness here is drawn independently of the client,
while in a real deployment it follows from concurrency and each client's
speed (slow clients, often those with more data or weaker devices, are
systematically stale, and which clients arrive depends on it); there is no
wall clock, so no throughput or time-to-accuracy figures; updates older than
``S`` versions cannot occur; the ``K`` updates of a buffer are computed in
one simulated round from the cohort sampled for it, rather than from
clients that started at different times.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras._numbers import is_integer
from fedjax_keras._tree import tree_where
from fedjax_keras.aggregation import Aggregator, by_key, mean
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_number
from fedjax_keras.algorithms._optimizers import delta_optimizers
from fedjax_keras.algorithms._schedules import (
    init_for_run,
    run_hyperparams,
)
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
from fedjax_keras.models import Model, ModelWeights

# Folded into a client's first step key for its staleness draw, apart from the
# step's own use of the key (Dropout).
_STALENESS_STREAM = 0x5EA1


class FedBuffState(NamedTuple):
    """The model versions clients may start from.

    Attributes:
      older: pytree, leaves [max_staleness, ...]: ``x_{t-1}, ..., x_{t-S}``
        (the current model ``x_t`` is ``state.model``).
      num_older: int32 scalar, how many of them exist yet (``min(t, S)``).
    """

    older: Any
    num_older: jax.Array


class BuffCarry(NamedTuple):
    """A FedBuff client between steps.

    Attributes:
      train: `TrainCarry` of the local steps.
      staleness: int32, the drawn ``tau``; -1 before the first step.
      start: pytree like the trainable weights: the version it started from.
    """

    train: TrainCarry
    staleness: jax.Array
    start: Any


def draw_staleness(key, probs: jax.Array, num_older) -> jax.Array:
    """``tau`` in ``[0, num_older]`` with probabilities ``probs`` renormalised over that range."""
    exists = jnp.arange(probs.shape[0]) <= num_older
    logits = jnp.where(exists & (probs > 0), jnp.log(jnp.where(probs > 0, probs, 1.0)), -jnp.inf)
    # If no existing version has mass (e.g. probs = [0, 0, 1] in round 0), take the newest.
    logits = jnp.where(jnp.all(logits == -jnp.inf), jnp.where(exists, 0.0, -jnp.inf), logits)
    return jax.random.categorical(key, logits).astype(jnp.int32)


def staleness_weight(tau, exponent: float) -> jax.Array:
    """``s(tau) = (1 + tau)^(-exponent)``."""
    return (1.0 + jnp.asarray(tau, jnp.float32)) ** (-exponent)


def _check_probs(max_staleness, staleness_probs) -> np.ndarray:
    if not is_integer(max_staleness):
        raise ValueError(f"max_staleness must be an int >= 0; received {max_staleness!r}.")
    if max_staleness < 0:
        raise ValueError(f"max_staleness must be an int >= 0; received {max_staleness!r}.")
    if staleness_probs is None:
        return np.full(max_staleness + 1, 1.0 / (max_staleness + 1), np.float32)
    probs = np.asarray(staleness_probs, np.float64)
    if probs.shape != (max_staleness + 1,) or not np.all(probs >= 0) or not probs.sum() > 0:
        raise ValueError(
            f"staleness_probs must be max_staleness + 1 = {max_staleness + 1} non-negative "
            f"numbers with a positive sum (the probabilities of tau = 0..{max_staleness}); "
            f"received {staleness_probs!r}."
        )
    return (probs / probs.sum()).astype(np.float32)


def fed_buff(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    max_staleness: int = 4,
    staleness_probs: Sequence[float] | None = None,
    staleness_exponent: float = 0.5,
    weighting: ClientWeighting | str = ClientWeighting.UNIFORM,
    aggregator: Aggregator | None = None,
    client_learning_rate_schedule=None,
) -> FederatedAlgorithm:
    """FedBuff (Nguyen et al. 2022, arXiv:2106.06639), simulated, as a `FederatedAlgorithm`.

    Client ``i`` draws ``tau_i``, trains from ``x_{t - tau_i}``; the server
    steps on ``mean_i((1 + tau_i)^(-a) (y_i - x_{t - tau_i}))`` (module docstring).

    Args:
      model: from `from_keras_model`.
      client_optimizer: as in `fed_avg`.
      server_optimizer: applied to ``-aggregate``; default ``optax.sgd(1.0)``.
      max_staleness: ``S``, versions kept besides the current one.
      staleness_probs: probabilities of ``tau = 0..S``; default uniform.
      staleness_exponent: ``a`` in ``s(tau) = (1 + tau)^(-a)``, >= 0.
      weighting: `ClientWeighting` (or its value); uniform is the paper's ``1/K``.
      aggregator: combines the weighted deltas (default: the mean).
      client_learning_rate_schedule: see `build_weighted_fed_avg`.

    Example:
      >>> process = FederatedProcess(model, fed_buff(model, optax.sgd(0.05)), batch_size=10)
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    probs = jnp.asarray(_check_probs(max_staleness, staleness_probs))
    exponent = check_number(staleness_exponent, "staleness_exponent", minimum=0.0)
    stale = int(max_staleness)
    client_opt, broadcast_fn, server_opt = delta_optimizers(
        model, client_optimizer, client_learning_rate_schedule, server_optimizer
    )
    delta_aggregator = aggregator_or_default(aggregator)

    def version(current, older, tau):
        if stale == 0:
            return current
        index = jnp.clip(tau - 1, 0, stale - 1)
        return jax.tree.map(lambda c, o: jnp.where(tau == 0, c, o[index]), current, older)

    def start(broadcast, client_state) -> BuffCarry:
        optimizer = client_opt(broadcast)
        train = start_training(model, optimizer, broadcast.model, run_hyperparams(broadcast))
        return BuffCarry(train, jnp.array(-1, jnp.int32), broadcast.model.trainable)

    def step(carry: BuffCarry, batch, key, broadcast, client_state) -> BuffCarry:
        buffer: FedBuffState = broadcast.algorithm_state
        optimizer = client_opt(broadcast)
        # The first step (step 0 of every client) draws tau and moves to that version.
        first = carry.staleness < 0
        drawn = draw_staleness(jax.random.fold_in(key, _STALENESS_STREAM), probs, buffer.num_older)
        tau = jnp.where(first, drawn, carry.staleness)
        stale_weights = version(broadcast.model.trainable, buffer.older, tau)
        start_weights = tree_where(first, stale_weights, carry.start)
        train = carry.train._replace(
            weights=ModelWeights(
                tree_where(first, stale_weights, carry.train.weights.trainable),
                carry.train.weights.non_trainable,
            ),
            optimizer_state=tree_where(
                first,
                init_for_run(optimizer, stale_weights, broadcast),
                carry.train.optimizer_state,
            ),
        )
        train = training_step(model, optimizer)(train, batch, key, broadcast, client_state)
        return BuffCarry(train, tau, start_weights)

    def finish(carry: BuffCarry, broadcast, client_state) -> ClientOutput:
        train = carry.train
        tau = jnp.maximum(carry.staleness, 0)
        scale = staleness_weight(tau, exponent)
        delta = jax.tree.map(lambda y, x: scale * (y - x), train.weights.trainable, carry.start)
        return ClientOutput.from_training(
            train,
            {"delta": delta, "staleness": tau.astype(jnp.float32)},
            client_weight(train.num_examples, weighting),
            report={"staleness": tau},
        )

    def server_init(weights):
        older = jax.tree.map(lambda w: jnp.zeros((stale,) + w.shape, w.dtype), weights.trainable)
        return server_opt.init(weights.trainable), FedBuffState(older, jnp.zeros((), jnp.int32))

    def server_update(state, aggregate, key):
        del key
        buffer: FedBuffState = state.algorithm_state
        current = state.model.trainable
        older = jax.tree.map(
            lambda c, o: jnp.concatenate([c[None], o[:-1]]) if stale else o, current, buffer.older
        )
        state = pseudo_gradient_step(server_opt, state, aggregate["delta"])
        new_buffer = FedBuffState(older, jnp.minimum(buffer.num_older + 1, stale))
        return state.replace(algorithm_state=new_buffer), {"mean_staleness": aggregate["staleness"]}

    return FederatedAlgorithm(
        name="fed_buff",
        client_program=ClientProgram(start, step, finish),
        server_init=server_init,
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "staleness": mean()}),
        broadcast=broadcast_fn,
    )


@process_builder(fed_buff)
def build_fed_buff(*args, **kwargs) -> FederatedProcess:
    """FedBuff (Nguyen et al. 2022, arXiv:2106.06639), simulated: stale starts, weighted updates.

    Round ``t``: client ``i`` draws ``tau_i``, trains from ``x_{t - tau_i}`` to
    ``y_i``; ``x <- x + lr * mean_i((1 + tau_i)^(-a) (y_i - x_{t - tau_i}))``
    (through the server optimizer). The module docstring says what the
    simulation reproduces of asynchrony and what it does not.

    Args:
      model: from `from_keras_model`.
      client_optimizer: as in `build_weighted_fed_avg`.
      server_optimizer: applied to ``-aggregate``; default ``optax.sgd(1.0)``.
      max_staleness: ``S``, versions kept besides the current one (each a copy
        of the trainable weights in the state and the broadcast).
      staleness_probs: probabilities of ``tau = 0..S`` (normalised); default
        uniform. Versions that do not exist yet (``tau > t``) are left out
        and the rest renormalised.
      staleness_exponent: ``a`` in ``s(tau) = (1 + tau)^(-a)`` (0.5, the
        paper's); 0 applies stale updates at full weight.
      weighting: 'uniform' (the paper's ``1/K``) or 'num_examples'.
      aggregator: combines the weighted deltas (default: the mean).
      client_learning_rate_schedule: see `build_weighted_fed_avg`.
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`; every round reports each client's ``tau`` as
      ``metrics['clients/staleness']`` (cohort order) and their mean,
      weighted as the deltas, as ``mean_staleness``.

    Example:
      >>> process = build_fed_buff(model, optax.sgd(0.05), max_staleness=4, batch_size=10)
    """
