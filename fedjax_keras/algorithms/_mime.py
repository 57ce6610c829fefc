"""Mime and MimeLite: clients apply the server optimizer's statistics, frozen.

Karimireddy et al., "Breaking the centralized barrier for cross-device
federated learning" (Mime: "Mimicking Centralized Stochastic Algorithms in
Federated Learning"), NeurIPS 2021, arXiv:2008.03606, Algorithm 1. A base
optimizer ``B`` with update ``U(g, s)`` and statistics update ``V(g, s)``
(the paper's SGD with momentum is damped: ``m <- (1 - beta) g + beta m``,
`paper_momentum`) is run as if on centralised data. A round with server
weights ``x`` and statistics ``s``:

- Mime: ``c = mean_i grad f_i(x)``, the cohort's full-batch gradient at ``x``;
- every client starts from ``x`` and takes local steps ``y <- y - U(d, s)``
  with ``s`` held fixed; MimeLite uses ``d = g(y; b)``, the minibatch
  gradient; Mime adds an SVRG-style correction, ``d = g(y; b) - g(x; b) + c``;
- the server moves ``x`` by the (weighted) mean delta through the server
  optimizer (``optax.sgd(1.0)``: ``x + mean(y - x)``) and updates its
  statistics with the (weighted) mean full-batch gradient ``G`` at ``x``:
  ``s <- V(G, s)`` (Mime: ``G = c``).

How the rounds are run, and why:

- **Mime: two passes (``control_variate='two_pass'``, the paper's).** ``c``
  must be known before any client of the round takes a step, and it is an
  average over the whole cohort, so no client can compute it alone. The
  engine's `FirstPass` runs a pass over the cohort at ``x`` before the
  training pass (each client's full-batch gradient, one gradient per batch,
  weighted-mean aggregated) and writes ``c`` into the algorithm state, which
  the training pass broadcasts. That is the paper's first pass, distributed
  over the clients as in FedJAX; it keeps the round loop unaware of Mime
  (`fedjax_keras.engine._first_pass` says how). A local step then costs two
  gradients (at ``y`` and ``x``), the first pass one per batch, and ``c``
  doubles as ``G``. ``c`` is consumed by its round: if a first pass is not
  applied (no finite client), the round takes MimeLite steps and leaves
  ``s`` as it was.
- **Mime, one pass (``control_variate='previous_round'``).** ``c`` is the
  previous round's ``G`` (computed at the previous server weights
  ``x_prev``, from another cohort), anchored at those weights,
  ``d = g(y; b) - g(x_prev; b) + c``, so that ``E[d] = grad f(y)`` still
  holds (a stale ``c`` anchored at ``x`` would add ``grad f(x_prev) -
  grad f(x)``). Every client accumulates its full-batch gradient at ``x``
  during its local pass (three gradients per step) and the first round takes
  MimeLite steps. It runs under `Sweep`; under strong label skew its ``c``
  comes from other labels and it learns much worse (docs/algorithms.md).
- **MimeLite: one pass, as the paper's.** It needs no ``c``; each client's
  full-batch gradient at ``x`` is accumulated during its local pass (the
  gradient at ``x`` on each batch, weighted by its examples: over an epoch
  exactly the full-batch gradient the paper computes after local training).
- The base optimizer's state ``s`` is ``state.optimizer_state[0]`` (the
  server optimizer's is ``[1]``) and is broadcast to the clients
  (`MimeBroadcast`); local steps use it and discard the state the optimizer
  returns.
- Gradients at ``x`` (and ``x_prev``) use the same Dropout key as the step's
  gradient at ``y``; non-trainable weights (BatchNorm statistics) are the
  server's, as in FedAvg's default.

One job: the Mime family's client program and server update; its three
control-variate sources (first pass, previous round, none for MimeLite) share
the local step and the statistics update, so they stay in one module.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_keras._tree import tree_where
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
from fedjax_keras.engine import (
    FederatedAlgorithm,
    FederatedProcess,
    FirstPass,
    check_choice,
    require_model,
)
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import Optimizer, as_optimizer

CONTROL_VARIATES = ("two_pass", "previous_round")


def paper_momentum(learning_rate: float, momentum: float = 0.9) -> optax.GradientTransformation:
    """The paper's SGD with damped momentum: ``m <- (1 - beta) g + beta m``, step ``-lr m``.

    optax's ``sgd(lr, momentum=beta)`` is undamped (``m <- g + beta m``): with
    ``s`` frozen in the local steps, a client's step is then about
    ``1 / (1 - beta)`` times the base rate (10x at 0.9). This one keeps the
    step at ``lr`` times a running mean of gradients, as Mime's experiments.

    Args:
      learning_rate: ``lr``.
      momentum: ``beta`` in [0, 1).
    """
    return optax.chain(optax.ema(momentum, debias=False), optax.scale(-learning_rate))


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
      control: pytree like the trainable weights: ``c``, the mean full-batch
        gradient (this round's first pass, or the previous round's).
      anchor: pytree like the trainable weights: ``x_prev``, where the
        previous round's ``c`` was computed; ``()`` with two passes (``c`` is at ``x``).
      has_control: bool scalar, whether ``c`` is there to use (False in the
        first round of the one-pass variant, and after a round consumed it).
    """

    control: Any
    anchor: Any
    has_control: jax.Array


class MimeCarry(NamedTuple):
    """A Mime client between steps: its training and its gradient sum at ``x``.

    Attributes:
      train: `TrainCarry` of the local steps.
      grad_sum: pytree like the trainable weights: sum over batches of
        ``examples * gradient at x``; ``()`` when the server does not need it.
    """

    train: TrainCarry
    grad_sum: Any


class GradientSums(NamedTuple):
    """A client of Mime's first pass: sums over its batches at the server weights.

    Attributes:
      grad_sum: pytree like the trainable weights, ``sum examples * gradient``.
      loss_sum: float32, ``sum examples * loss``.
      num_examples: int32.
      metrics: the model's empty metric state (the first pass reports its loss only).
    """

    grad_sum: Any
    loss_sum: jax.Array
    num_examples: jax.Array
    metrics: Any


def _frozen(base: Optimizer) -> Optimizer:
    """``base`` with its state held fixed: ``y <- y - U(g, s)``, ``s`` unchanged."""
    return Optimizer(
        base.init, lambda grads, state, params: (base.update(grads, state, params)[0], state)
    )


def _masked_add(total, value, count):
    # jnp.where, not a product: a padded batch's gradient may be NaN.
    return jax.tree.map(lambda s, g: s + jnp.where(count > 0, g * count, 0.0), total, value)


def _full_gradient_pass(model: Model, weighting) -> FirstPass:
    """Mime's first pass: each client's full-batch gradient at ``x``, weighted-mean aggregated."""

    def start(broadcast: MimeBroadcast, client_state) -> GradientSums:
        zeros = jax.tree.map(jnp.zeros_like, broadcast.model.trainable)
        zero_f, zero_i = jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32)
        return GradientSums(zeros, zero_f, zero_i, model.init_metrics())

    def step(carry: GradientSums, batch, key, broadcast: MimeBroadcast, client_state):
        server = broadcast.model
        batch = with_float_mask({"x": batch["x"], "y": batch["y"], "mask": batch["mask"]})
        grad_fn = jax.value_and_grad(model.loss_and_output, has_aux=True)
        (loss, output), grads = grad_fn(
            server.trainable, server.non_trainable, batch, training=True, rng=key
        )
        count = output.num_examples
        return GradientSums(
            _masked_add(carry.grad_sum, grads, count),
            carry.loss_sum + jnp.where(count > 0, loss * count, 0.0),
            carry.num_examples + count,
            carry.metrics,
        )

    def finish(carry: GradientSums, broadcast, client_state) -> ClientOutput:
        count = jnp.maximum(carry.num_examples, 1).astype(jnp.float32)
        gradient = jax.tree.map(lambda s: s / count, carry.grad_sum)
        return ClientOutput.from_training(
            carry, gradient, client_weight(carry.num_examples, weighting)
        )

    def apply(mime: MimeState, c) -> MimeState:
        return MimeState(c, (), jnp.ones((), bool))

    return FirstPass(ClientProgram(start, step, finish), apply, mean())


def _mime_algorithm(
    model: Model,
    base_optimizer,
    server_optimizer,
    control_variate: str | None,
    weighting,
    aggregator,
) -> FederatedAlgorithm:
    """Mime (``control_variate`` named) or MimeLite (None) as a `FederatedAlgorithm`."""
    require_model(model)
    if control_variate is not None:
        check_choice(control_variate, CONTROL_VARIATES, "control_variate")
    two_pass = control_variate == "two_pass"
    # The server needs the clients' full-batch gradients unless the first pass gave them.
    collects_gradient = not two_pass
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
        grad_sum = ()
        if collects_gradient:
            grad_sum = jax.tree.map(jnp.zeros_like, broadcast.model.trainable)
        return MimeCarry(train, grad_sum)

    def step(carry: MimeCarry, batch, key, broadcast: MimeBroadcast, client_state) -> MimeCarry:
        server = broadcast.model
        batch = with_float_mask({"x": batch["x"], "y": batch["y"], "mask": batch["mask"]})
        correction = None
        if control_variate is not None:
            mime: MimeState = broadcast.algorithm_state
            anchor = server.trainable if two_pass else mime.anchor
            at_anchor = gradient_at(anchor, server.non_trainable, batch, key)
            offset = jax.tree.map(
                lambda c, g: jnp.where(mime.has_control, c - g, 0.0), mime.control, at_anchor
            )
            correction = lambda grads, trainable, context: jax.tree.map(  # noqa: E731
                jnp.add, grads, offset
            )
        train = training_step(model, frozen, correction)(
            carry.train, batch, key, broadcast, client_state
        )
        grad_sum = carry.grad_sum
        if collects_gradient:
            at_server = gradient_at(server.trainable, server.non_trainable, batch, key)
            grad_sum = _masked_add(grad_sum, at_server, jnp.sum(batch["mask"]))
        return MimeCarry(train, grad_sum)

    def finish(carry: MimeCarry, broadcast: MimeBroadcast, client_state) -> ClientOutput:
        train = carry.train
        delta = jax.tree.map(jnp.subtract, train.weights.trainable, broadcast.model.trainable)
        update = {"delta": delta}
        if collects_gradient:
            count = jnp.maximum(train.num_examples, 1).astype(jnp.float32)
            update["gradient"] = jax.tree.map(lambda s: s / count, carry.grad_sum)
        return ClientOutput.from_training(
            train, update, client_weight(train.num_examples, weighting)
        )

    def server_init(weights):
        zeros = jax.tree.map(jnp.zeros_like, weights.trainable)
        state = ()
        if control_variate is not None:
            anchor = () if two_pass else weights.trainable
            state = MimeState(zeros, anchor, jnp.zeros((), bool))
        return (base.init(weights.trainable), server_opt.init(weights.trainable)), state

    def server_update(state, aggregate, key):
        del key
        x = state.model.trainable
        base_state, server_state = state.optimizer_state
        mime = state.algorithm_state
        if two_pass:
            full_gradient = mime.control
            _, updated = base.update(full_gradient, base_state, x)
            base_state = tree_where(mime.has_control, updated, base_state)
            mime = mime._replace(has_control=jnp.zeros((), bool))  # c is this round's only
        else:
            full_gradient = aggregate["gradient"]
            _, base_state = base.update(full_gradient, base_state, x)
            if control_variate is not None:
                mime = MimeState(full_gradient, x, jnp.ones((), bool))
        moved = pseudo_gradient_step(
            server_opt, state.replace(optimizer_state=server_state), aggregate["delta"]
        )
        norm = jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(full_gradient)))
        new_state = moved.replace(
            optimizer_state=(base_state, moved.optimizer_state), algorithm_state=mime
        )
        return new_state, {"full_gradient_norm": norm}

    parts = {"delta": delta_aggregator}
    if collects_gradient:
        parts["gradient"] = mean()
    name = {None: "mime_lite", "two_pass": "mime", "previous_round": "mime_previous_round"}
    return FederatedAlgorithm(
        name=name[control_variate],
        client_program=ClientProgram(start, step, finish),
        server_init=server_init,
        server_update=server_update,
        aggregator=by_key(parts),
        broadcast=lambda state: MimeBroadcast(
            state.model, state.algorithm_state, state.optimizer_state[0]
        ),
        first_pass=_full_gradient_pass(model, weighting) if two_pass else None,
    )


def mime(
    model: Model,
    base_optimizer,
    server_optimizer=None,
    *,
    control_variate: str = "two_pass",
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """Mime (Karimireddy et al. 2021, arXiv:2008.03606) as a `FederatedAlgorithm`.

    Local steps ``y <- y - U(g(y; b) - g(x; b) + c, s)`` with the server's
    base-optimizer statistics ``s`` frozen and ``c`` the cohort's full-batch
    gradient at ``x`` from a first pass; `build_mime` and the module docstring
    give the whole rule and the one-pass variant.

    Args:
      model: from `from_keras_model`.
      base_optimizer: the centralised optimizer to mimic (the paper's:
        ``paper_momentum(0.05, 0.9)``, damped SGD with momentum).
      server_optimizer: applied to ``-mean(delta)``; default ``optax.sgd(1.0)``.
      control_variate: 'two_pass' (the paper's: ``c`` from a first pass over
        this round's cohort at ``x``) or 'previous_round' (one pass: the
        previous round's ``c``, anchored at the previous ``x``).
      weighting: `ClientWeighting` (or its value) of the deltas and full-batch gradients.
      aggregator: combines the deltas (default: the weighted mean).

    Raises:
      ValueError: for an unknown ``control_variate``.

    Example:
      >>> process = FederatedProcess(model, mime(model, paper_momentum(0.05, 0.9)))
    """
    return _mime_algorithm(
        model, base_optimizer, server_optimizer, control_variate, weighting, aggregator
    )


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
    updates ``s`` with the cohort's full-batch gradient, accumulated during
    the local pass (one pass: MimeLite has no control variate). Arguments as `mime`.
    """
    return _mime_algorithm(model, base_optimizer, server_optimizer, None, weighting, aggregator)


@process_builder(mime)
def build_mime(*args, **kwargs) -> FederatedProcess:
    """Mime (Karimireddy et al. 2021, arXiv:2008.03606): frozen server statistics plus an
    SVRG-style control variate in every local step.

    A round, with the default ``control_variate='two_pass'`` (the paper's):
    a first pass over the cohort computes ``c = mean_i grad f_i(x)`` (each
    client's full-batch gradient at the server weights, weighted as the
    deltas); then each client steps ``y <- y - U(g(y; b) - g(x; b) + c, s)``
    with ``s`` fixed (``U`` is the base optimizer's update: ``lr * ((1 - beta)
    d + beta s)`` for `paper_momentum`); the server sets ``x <- x + server_lr
    * mean(y - x)`` and ``s <- V(c, s)``. Each local step costs two
    gradients, the first pass one per batch. With
    ``control_variate='previous_round'`` the round is one pass: ``c`` is the
    previous round's mean full-batch gradient, anchored at the previous
    weights (``g(y; b) - g(x_prev; b) + c``, three gradients per step; the
    first round takes MimeLite steps). The module docstring says why.

    Args:
      model: from `from_keras_model`.
      base_optimizer: the centralised optimizer to mimic, an optax transform
        or a Keras optimizer (the paper's: ``paper_momentum(lr, 0.9)``; optax's
        ``sgd(lr, momentum=0.9)`` is undamped, about 10x larger local steps);
        its learning rate is the clients' step size and its state lives on
        the server (``state.optimizer_state[0]``).
      server_optimizer: applied to ``-mean(delta)``; default ``optax.sgd(1.0)``
        (FedJAX's ``server_learning_rate``: pass ``optax.sgd(rate)``).
      control_variate: 'two_pass' (default) or 'previous_round'.
      weighting: 'num_examples' (default) or 'uniform', for the deltas and
        the full-batch gradients alike.
      aggregator: combines the deltas (default: the weighted mean); the
        full-batch gradients always take the weighted mean.
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`; its rounds report ``full_gradient_norm`` (of
      ``c``) and, with two passes, ``first_pass/loss`` (the server model's
      training loss on the cohort) and the first pass's client counts. A
      two-pass Mime cannot run under `Sweep`.

    Example:
      >>> process = build_mime(model, paper_momentum(0.05, 0.9), batch_size=10)
    """


@process_builder(mime_lite)
def build_mime_lite(*args, **kwargs) -> FederatedProcess:
    """MimeLite (Karimireddy et al. 2021, arXiv:2008.03606; TFF's ``build_weighted_mime_lite``).

    Client step: ``y <- y - U(g(y; b), s)`` with the server's statistics ``s``
    fixed; every client also accumulates its full-batch gradient at ``x``
    during the same pass (two gradients per step). Server:
    ``x <- x + server_lr * mean(y - x)``, ``s <- V(G, s)``. Arguments as
    `build_mime`, without ``control_variate``.
    """
