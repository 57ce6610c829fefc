"""Mime and MimeLite: clients apply the server optimizer's statistics, frozen.

Karimireddy et al., "Breaking the centralized barrier for cross-device
federated learning" (Mime: "Mimicking Centralized Stochastic Algorithms in
Federated Learning"), NeurIPS 2021, arXiv:2008.03606, Algorithm 1. A base
optimizer ``B`` with update ``U(g, s)`` and statistics update ``V(g, s)``
(SGD with momentum: ``s`` is the momentum buffer) is run as if on centralised
data:

- every client starts from the server weights ``x`` and takes local steps
  ``y <- y - U(d, s)`` with the server's statistics ``s`` held fixed;
  MimeLite uses ``d = g(y; b)``, the minibatch gradient; Mime adds an
  SVRG-style control variate, ``d = g(y; b) - g(z; b) + c``, where ``c`` is a
  full-batch gradient of the cohort at an anchor ``z``;
- every client also returns its full-batch gradient at ``x``;
- the server moves ``x`` by the (weighted) mean delta through the server
  optimizer (``optax.sgd(1.0)``: ``x + mean(y - x)``) and updates its
  statistics with the (weighted) mean full-batch gradient ``G``:
  ``s <- V(G, s)``.

What this implementation chooses, and why:

- **One pass.** The engine runs one pass of a client's batches per round; a
  client's full-batch gradient at ``x`` is accumulated during that pass
  (the gradient at ``x`` on each batch, weighted by its examples: over an
  epoch that is exactly the full-batch gradient, and over several epochs
  too). It costs one more gradient per local step, where FedJAX spends one
  per example in a separate pass.
- **Mime's control variate comes from the previous round.** The paper and
  FedJAX compute ``c`` from the current cohort at ``x`` before local
  training, a second pass per round. Here ``c`` is the previous round's
  ``G`` (computed at the previous server weights ``x_prev``), and the anchor
  is those same weights: ``z = x_prev``. Anchoring at ``x_prev`` rather than
  ``x`` keeps the corrected gradient unbiased,
  ``E[g(y) - g(x_prev) + c] = grad f(y)``; anchoring a stale ``c`` at ``x``
  would add the bias ``grad f(x_prev) - grad f(x)``. The price is a third
  gradient per step (at ``y``, at ``x`` for ``G``, at ``x_prev`` for the
  correction) and a second copy of the weights in the server state. The
  first round has no ``c`` yet: its clients take MimeLite steps.
- The base optimizer's state ``s`` is ``state.optimizer_state[0]`` (the
  server optimizer's is ``[1]``) and is broadcast to the clients
  (`MimeBroadcast`); local steps use it and discard the state the optimizer
  returns.
- Gradients at ``x`` and ``x_prev`` use the same Dropout key as the step's
  gradient at ``y``; non-trainable weights (BatchNorm statistics) are the
  server's, as in FedAvg's default.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras.aggregation import Aggregator, by_key, mean
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default
from fedjax_keras.algorithms._server_step import pseudo_gradient_step, server_optimizer_for
from fedjax_keras.algorithms._weighting import ClientWeighting, as_client_weighting, client_weight
from fedjax_keras.client import (
    ClientOutput,
    ClientProgram,
    TrainCarry,
    start_training,
    training_step,
    with_float_mask,
)
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import Optimizer, as_optimizer


class MimeBroadcast(NamedTuple):
    """What Mime's clients receive.

    Attributes:
      model: the server's `ModelWeights` ``x``.
      algorithm_state: `MimeState` (Mime) or ``()`` (MimeLite).
      optimizer_state: the base optimizer's statistics ``s``.
    """

    model: ModelWeights
    algorithm_state: Any
    optimizer_state: Any


class MimeState(NamedTuple):
    """Mime's control variate.

    Attributes:
      control: pytree like the trainable weights: ``c``, the previous round's
        mean full-batch gradient.
      anchor: pytree like the trainable weights: ``x_prev``, where ``c`` was computed.
      has_control: bool scalar, False until a round has computed ``c``.
    """

    control: Any
    anchor: Any
    has_control: jax.Array


class MimeCarry(NamedTuple):
    """A Mime client between steps: its training and its gradient sum at ``x``.

    Attributes:
      train: `TrainCarry` of the local steps.
      grad_sum: pytree like the trainable weights: sum over batches of
        ``examples * gradient at x``.
    """

    train: TrainCarry
    grad_sum: Any


def _frozen(base: Optimizer) -> Optimizer:
    """``base`` with its state held fixed: ``y <- y - U(g, s)``, ``s`` unchanged."""
    return Optimizer(
        base.init, lambda grads, state, params: (base.update(grads, state, params)[0], state)
    )


def _mime_algorithm(
    model: Model, base_optimizer, server_optimizer, control_variate: bool, weighting, aggregator
) -> FederatedAlgorithm:
    """Mime (``control_variate=True``) or MimeLite as a `FederatedAlgorithm` (module docstring)."""
    require_model(model)
    weighting = as_client_weighting(weighting)
    template = model.initial_weights.trainable
    base = as_optimizer(base_optimizer, template, argument="base_optimizer")
    server_opt = server_optimizer_for(server_optimizer, template)
    delta_aggregator = aggregator_or_default(aggregator)
    frozen = _frozen(base)

    def gradient_at(trainable, non_trainable, batch, key):
        grad_fn = jax.grad(model.loss_and_output, has_aux=True)
        grads, _ = grad_fn(trainable, non_trainable, batch, training=True, rng=key)
        return grads

    def start(broadcast: MimeBroadcast, client_state) -> MimeCarry:
        train = start_training(model, frozen, broadcast.model)
        train = train._replace(optimizer_state=broadcast.optimizer_state)
        return MimeCarry(train, jax.tree.map(jnp.zeros_like, broadcast.model.trainable))

    def step(carry: MimeCarry, batch, key, broadcast: MimeBroadcast, client_state) -> MimeCarry:
        server = broadcast.model
        batch = with_float_mask({"x": batch["x"], "y": batch["y"], "mask": batch["mask"]})
        count = jnp.sum(batch["mask"])
        at_server = gradient_at(server.trainable, server.non_trainable, batch, key)
        correction = None
        if control_variate:
            mime: MimeState = broadcast.algorithm_state
            at_anchor = gradient_at(mime.anchor, server.non_trainable, batch, key)
            offset = jax.tree.map(
                lambda c, g: jnp.where(mime.has_control, c - g, 0.0), mime.control, at_anchor
            )
            correction = lambda grads, trainable, context: jax.tree.map(  # noqa: E731
                jnp.add, grads, offset
            )
        train = training_step(model, frozen, correction)(
            carry.train, batch, key, broadcast, client_state
        )
        # jnp.where, not a product: a padded batch's gradient may be NaN.
        grad_sum = jax.tree.map(
            lambda s, g: s + jnp.where(count > 0, g * count, 0.0), carry.grad_sum, at_server
        )
        return MimeCarry(train, grad_sum)

    def finish(carry: MimeCarry, broadcast: MimeBroadcast, client_state) -> ClientOutput:
        train = carry.train
        count = jnp.maximum(train.num_examples, 1).astype(jnp.float32)
        delta = jax.tree.map(jnp.subtract, train.weights.trainable, broadcast.model.trainable)
        gradient = jax.tree.map(lambda s: s / count, carry.grad_sum)
        return ClientOutput.from_training(
            train,
            {"delta": delta, "gradient": gradient},
            client_weight(train.num_examples, weighting),
        )

    def server_init(weights):
        zeros = jax.tree.map(jnp.zeros_like, weights.trainable)
        state = ()
        if control_variate:
            state = MimeState(zeros, weights.trainable, jnp.zeros((), bool))
        return (base.init(weights.trainable), server_opt.init(weights.trainable)), state

    def server_update(state, aggregate, key):
        del key
        x = state.model.trainable
        base_state, server_state = state.optimizer_state
        _, base_state = base.update(aggregate["gradient"], base_state, x)
        moved = pseudo_gradient_step(
            server_opt, state.replace(optimizer_state=server_state), aggregate["delta"]
        )
        mime = state.algorithm_state
        if control_variate:
            mime = MimeState(aggregate["gradient"], x, jnp.ones((), bool))
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(aggregate["gradient"])))
        new_state = moved.replace(
            optimizer_state=(base_state, moved.optimizer_state), algorithm_state=mime
        )
        return new_state, {"full_gradient_norm": norm}

    return FederatedAlgorithm(
        name="mime" if control_variate else "mime_lite",
        client_program=ClientProgram(start, step, finish),
        server_init=server_init,
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "gradient": mean()}),
        broadcast=lambda state: MimeBroadcast(
            state.model, state.algorithm_state, state.optimizer_state[0]
        ),
    )


def mime(
    model: Model,
    base_optimizer,
    server_optimizer=None,
    *,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """Mime (Karimireddy et al. 2021, arXiv:2008.03606) as a `FederatedAlgorithm`.

    Local steps ``y <- y - U(g(y; b) - g(x_prev; b) + c, s)`` with the server's
    base-optimizer statistics ``s`` frozen; `build_mime` and the module
    docstring give the whole rule and why ``c`` is the previous round's.

    Args:
      model: from `from_keras_model`.
      base_optimizer: the centralised optimizer to mimic (e.g.
        ``optax.sgd(0.1, momentum=0.9)``).
      server_optimizer: applied to ``-mean(delta)``; default ``optax.sgd(1.0)``.
      weighting: `ClientWeighting` (or its value) of the deltas and full-batch gradients.
      aggregator: combines the deltas (default: the weighted mean).

    Example:
      >>> process = FederatedProcess(model, mime(model, optax.sgd(0.05, momentum=0.9)))
    """
    return _mime_algorithm(model, base_optimizer, server_optimizer, True, weighting, aggregator)


def mime_lite(
    model: Model,
    base_optimizer,
    server_optimizer=None,
    *,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """MimeLite (Karimireddy et al. 2021, arXiv:2008.03606) as a `FederatedAlgorithm`.

    Local steps ``y <- y - U(g(y; b), s)`` with ``s`` frozen; the server
    updates ``s`` with the cohort's full-batch gradient. Arguments as `mime`.
    """
    return _mime_algorithm(model, base_optimizer, server_optimizer, False, weighting, aggregator)


@process_builder(mime)
def build_mime(*args, **kwargs) -> FederatedProcess:
    """Mime (Karimireddy et al. 2021, arXiv:2008.03606): frozen server statistics plus an
    SVRG-style control variate in every local step.

    Client step: ``y <- y - U(g(y; b) - g(x_prev; b) + c, s)`` with ``s`` fixed
    (``U`` is the base optimizer's update: ``lr * (d + momentum * s)`` for
    ``optax.sgd(lr, momentum)``); ``c`` is the previous round's mean full-batch
    gradient at ``x_prev`` (the first round has none and takes MimeLite
    steps). Server: ``x <- x + server_lr * mean(y - x)``,
    ``s <- V(G, s)`` with ``G`` the mean full-batch gradient at ``x``, then
    ``c <- G``, ``x_prev <- x``. The module docstring says why ``c`` comes
    from the previous round (one pass per round) and is anchored where it was
    computed (no bias); each local step costs three gradients.

    Args:
      model: from `from_keras_model`.
      base_optimizer: the centralised optimizer to mimic, an optax transform
        or a Keras optimizer (e.g. ``optax.sgd(0.1, momentum=0.9)``); its
        learning rate is the clients' step size and its state lives on the
        server (``state.optimizer_state[0]``).
      server_optimizer: applied to ``-mean(delta)``; default ``optax.sgd(1.0)``
        (FedJAX's ``server_learning_rate``: pass ``optax.sgd(rate)``).
      weighting: 'num_examples' (default) or 'uniform', for the deltas and
        the full-batch gradients alike.
      aggregator: combines the deltas (default: the weighted mean); the
        full-batch gradients always take the weighted mean.
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`; its rounds report ``full_gradient_norm``.

    Example:
      >>> process = build_mime(model, optax.sgd(0.05, momentum=0.9), batch_size=10)
    """


@process_builder(mime_lite)
def build_mime_lite(*args, **kwargs) -> FederatedProcess:
    """MimeLite (Karimireddy et al. 2021, arXiv:2008.03606; TFF's ``build_weighted_mime_lite``).

    Client step: ``y <- y - U(g(y; b), s)`` with the server's statistics ``s``
    fixed; every client also accumulates its full-batch gradient at ``x``
    during the same pass (two gradients per step). Server:
    ``x <- x + server_lr * mean(y - x)``, ``s <- V(G, s)``. Arguments as
    `build_mime`.
    """
