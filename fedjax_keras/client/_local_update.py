"""One client's local computation, as start / step / finish pieces.

A client's work in a round is ``finish(step(...step(start())...))`` over its
batches. Keeping the pieces separate lets the engine run the steps either
inside one compiled program (``lax.scan``, vmapped over clients) or one
compiled call per step from the host: on XLA:CPU a convolution inside a
``while`` loop (which ``lax.scan`` lowers to) runs tens of times slower than
the same convolution outside one (measured with jax 0.10: 2.8 s against
0.065 s for four gradient steps of a 3x3 convolution), so convolutional models
on a CPU must not put their steps in a scan.

Padded steps (every example masked) are no-ops for the weights, the
non-trainable state and the optimizer state, so clients with fewer batches than
their chunk's step count end exactly where unpadded training would.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import Optimizer

# grad_correction(grads, trainable, (broadcast, client_state)) -> grads: how
# FedProx and SCAFFOLD change the plain gradient.
GradCorrection = Callable[[Any, Any, Any], Any]


class ClientOutput(NamedTuple):
    """What one client contributes to a round (leaves unbatched, or [clients, ...]).

    Attributes:
      update: pytree, what the client sends the aggregator (usually its model
        delta, client minus server; a dict of several parts for algorithms
        that aggregate more than one thing, e.g. SCAFFOLD's control deltas).
      weight: float32 scalar, the client's aggregation weight.
      metrics: the client's unfinalized metric state.
      loss_sum: float32, sum of ``loss * num_examples`` over its batches.
      num_examples: int32, examples the client trained on.
      client_state: the client's new persistent state; ``()`` (the default) for none.
      report: a dict of per-client values (scalars or small arrays) that the
        round returns for every client, in cohort order, as metrics
        ``clients/<name>`` (e.g. per-client accuracy for a distribution);
        ``()`` (the default) for none.
    """

    update: Any
    weight: jax.Array
    metrics: Any
    loss_sum: jax.Array
    num_examples: jax.Array
    client_state: Any = ()
    report: Any = ()

    @classmethod
    def from_training(cls, carry, update, weight, **extra) -> "ClientOutput":
        """The output of a client whose training sums are ``carry``'s.

        Args:
          carry: anything with ``metrics``, ``loss_sum`` and ``num_examples``
            (a `TrainCarry`, or the `MetricSums` of the model an algorithm
            reports): the round's loss and metrics come from it.
          update: what goes to the aggregator.
          weight: float32 scalar, the client's aggregation weight.
          **extra: ``client_state`` and ``report``.
        """
        return cls(
            update=update,
            weight=weight,
            metrics=carry.metrics,
            loss_sum=carry.loss_sum,
            num_examples=carry.num_examples,
            **extra,
        )


class ClientBatchArrays(NamedTuple):
    """One client's (or, with a leading axis, a chunk's) batches.

    Attributes:
      x: pytree, leaves [steps, batch, ...].
      y: pytree, leaves [steps, batch, ...].
      mask: bool [steps, batch].
    """

    x: Any
    y: Any
    mask: jax.Array


class ClientProgram(NamedTuple):
    """A client's work as three pure functions.

    Attributes:
      start: ``(broadcast, client_state) -> carry``.
      step: ``(carry, batch, key, broadcast, client_state) -> carry`` where
        ``batch`` is ``{'x', 'y', 'mask'}`` with leaves [batch, ...] and ``key``
        is this step's key.
      finish: ``(carry, broadcast, client_state) -> ClientOutput``.
    """

    start: Callable[..., Any]
    step: Callable[..., Any]
    finish: Callable[..., ClientOutput]

    def run(
        self, broadcast, data: ClientBatchArrays, key, client_state, *, unroll: int = 1
    ) -> ClientOutput:
        """All of one client's steps in one ``lax.scan``; leaves of ``data`` [steps, batch, ...].

        ``unroll`` is passed to `lax.scan`: several steps per loop iteration.
        """

        def body(carry, inputs):
            x, y, mask, index = inputs
            batch = {"x": x, "y": y, "mask": mask}
            return self.step(carry, batch, step_key(key, index), broadcast, client_state), None

        num_steps = data.mask.shape[0]
        carry, _ = jax.lax.scan(
            body,
            self.start(broadcast, client_state),
            (data.x, data.y, data.mask, jnp.arange(num_steps)),
            unroll=max(1, min(unroll, num_steps)),
        )
        return self.finish(carry, broadcast, client_state)


def with_float_mask(batch: dict) -> dict:
    """``batch`` with its mask as float32, as the model's loss and metrics take it.

    The engine's batches carry a bool mask [batch] (cheaper to move); a client
    step that calls the model itself converts it once, here.
    """
    return {**batch, "mask": jnp.asarray(batch["mask"], jnp.float32)}


class TrainCarry(NamedTuple):
    """The state of local training between steps."""

    weights: ModelWeights
    optimizer_state: Any
    metrics: Any
    loss_sum: jax.Array
    num_examples: jax.Array
    num_steps: jax.Array


def with_hyperparams(optimizer_state, hyperparams: dict):
    """``optimizer_state`` of an ``optax.inject_hyperparams`` optimizer with new values.

    Raises:
      ValueError: the state has no injected hyper-parameters, or not these names.
    """
    current = getattr(optimizer_state, "hyperparams", None)
    if current is None:
        raise ValueError(
            "Per-run hyper-parameters need an optimizer whose hyper-parameters live in its "
            "state: build it with optax.inject_hyperparams, e.g. "
            "optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)."
        )
    unknown = sorted(set(hyperparams) - set(current))
    if unknown:
        raise ValueError(
            f"The optimizer has no hyper-parameters {unknown}; it has {sorted(current)}."
        )
    merged = {
        name: jnp.asarray(hyperparams.get(name, value), jnp.result_type(value))
        for name, value in current.items()
    }
    return optimizer_state._replace(hyperparams=merged)


def round_key(seed_and_round) -> jax.Array:
    """The key of a round from uint32 [2] ``(seed, round)``, computed inside the programs."""
    base = jax.random.fold_in(jax.random.PRNGKey(0), seed_and_round[0])
    return jax.random.fold_in(base, seed_and_round[1])


def client_key(round_key: jax.Array, position: jax.Array, client_key_id: jax.Array) -> jax.Array:
    """The key of one client in one round, from its cohort position and its id.

    Folding in the cohort position keeps two draws of the same client (sampling
    with replacement) distinct; neither depends on how the cohort is chunked.
    """
    return jax.random.fold_in(jax.random.fold_in(round_key, position), client_key_id)


def step_key(client_key_: jax.Array, step_index) -> jax.Array:
    """The key of one local step of one client."""
    return jax.random.fold_in(client_key_, step_index)


def training_step(
    model: Model,
    optimizer: Optimizer,
    grad_correction: GradCorrection | None = None,
) -> Callable[..., TrainCarry]:
    """``(carry, batch, key, broadcast, client_state) -> carry``: one local SGD-style step.

    The step itself is `Model.train_step` (the one implementation of a local
    step, padded steps no-ops included); this adds the client's running loss,
    example and step counts and metrics.

    Args:
      model: the wrapped model.
      optimizer: the client optimizer.
      grad_correction: optional gradient correction (FedProx, SCAFFOLD).
    """

    def step(carry: TrainCarry, batch, key, broadcast, client_state) -> TrainCarry:
        mask = jnp.asarray(batch["mask"], jnp.float32)
        batch = {"x": batch["x"], "y": batch["y"], "mask": mask}
        correction = None
        if grad_correction is not None:

            def correction(grads, trainable):
                return grad_correction(grads, trainable, (broadcast, client_state))

        weights, optimizer_state, output = model.train_step(
            carry.weights,
            carry.optimizer_state,
            batch,
            rng=key,
            optimizer=optimizer,
            grad_correction=correction,
        )
        has_examples = output.num_examples > 0
        # jnp.where, not a product: a padded step's loss may be NaN and must not leak in.
        return TrainCarry(
            weights,
            optimizer_state,
            model.update_metrics(carry.metrics, batch, output.predictions, output.output_masks),
            carry.loss_sum + jnp.where(has_examples, output.loss * output.num_examples, 0.0),
            carry.num_examples + output.num_examples,
            carry.num_steps + has_examples.astype(jnp.int32),
        )

    return step


def start_training(
    model: Model, optimizer: Optimizer, weights: ModelWeights, hyperparams=None
) -> TrainCarry:
    """The carry before a client's first step, starting from ``weights``.

    Args:
      model: the wrapped model.
      optimizer: the client optimizer.
      weights: the starting weights.
      hyperparams: values (arrays) for the optimizer's injected hyper-parameters
        (an ``optax.inject_hyperparams`` optimizer, e.g. ``{'learning_rate':
        lr}``), overriding those it was built with: how a vmapped sweep gives
        every run its own learning rate. None or ``{}`` keeps them.
    """
    optimizer_state = optimizer.init(weights.trainable)
    if hyperparams:
        optimizer_state = with_hyperparams(optimizer_state, hyperparams)
    return TrainCarry(
        weights,
        optimizer_state,
        model.init_metrics(),
        jnp.zeros((), jnp.float32),
        jnp.zeros((), jnp.int32),
        jnp.zeros((), jnp.int32),
    )
