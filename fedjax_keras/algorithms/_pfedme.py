"""pFedMe: personalized models as Moreau envelopes of the clients' losses.

Dinh, Tran and Nguyen, "Personalized Federated Learning with Moreau
Envelopes", NeurIPS 2020, arXiv:2006.08848 (Algorithm 1).

A round, for a client starting its local model at the server weights,
``w_k = w``, and its personalized model at ``theta = w``; on each batch ``b``
(one pass):

    repeat inner_steps times:        (theta -> argmin f_k(.; b) + lam/2 ||. - w_k||^2)
        theta <- theta - personal_lr (grad f_k(theta; b) + lam (theta - w_k))
    w_k <- w_k - eta lam (w_k - theta)

``theta`` carries over from one batch to the next (a warm start, as the
authors' implementation does). The server moves to ``w + beta mean(w_k -
w)``: the server optimizer steps on ``-mean`` (``optax.sgd(beta)``; the
paper's ``beta = 1`` is plain averaging, and it averages clients uniformly:
pass ``weighting='uniform'``). Nothing is kept per client: ``theta`` is
recomputed from ``w`` every round.

The round's ``loss`` and model metrics are the personalized model's: ``theta``
on each batch before its inner steps.
"""

import jax
import jax.numpy as jnp

from fedjax_keras._tree import tree_where
from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_count, check_number
from fedjax_keras.algorithms._metric_sums import add_output, empty_sums
from fedjax_keras.algorithms._server_step import (
    init_server_optimizer,
    plain_server_update,
    server_optimizer_for,
)
from fedjax_keras.algorithms._weighting import ClientWeighting, as_client_weighting, client_weight
from fedjax_keras.client import ClientOutput, ClientProgram, with_float_mask
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model, ModelWeights


def pfedme(
    model: Model,
    client_learning_rate: float,
    server_optimizer=None,
    *,
    lam: float = 15.0,
    personal_learning_rate: float = 0.05,
    inner_steps: int = 5,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """pFedMe (Dinh et al. 2020, arXiv:2006.08848) as a `FederatedAlgorithm`.

    Every batch: ``inner_steps`` steps toward the Moreau envelope's
    personalized model ``theta``, then ``w_k <- w_k - eta lam (w_k - theta)``
    (module docstring).

    Args:
      model: from `from_keras_model`.
      client_learning_rate: ``eta``, the local model's rate.
      server_optimizer: applied to ``-aggregate(delta)``; default ``optax.sgd(1.0)``.
      lam: ``lambda > 0``, the Moreau envelope's regularization.
      personal_learning_rate: the inner solver's rate.
      inner_steps: ``K``, the inner gradient steps per batch.
      weighting: `ClientWeighting` (or its value) of the deltas.
      aggregator: combines the deltas (default: the weighted mean).

    Example:
      >>> process = FederatedProcess(model, pfedme(model, 0.05, lam=15.0), batch_size=10)
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    eta = check_number(client_learning_rate, "client_learning_rate", minimum=0.0, strict=True)
    lam = check_number(lam, "lam", minimum=0.0, strict=True)
    personal_lr = check_number(
        personal_learning_rate, "personal_learning_rate", minimum=0.0, strict=True
    )
    inner_steps = check_count(inner_steps, "inner_steps")
    delta_aggregator = aggregator_or_default(aggregator)
    server_opt = server_optimizer_for(server_optimizer, model.initial_weights.trainable)
    grad_fn = jax.value_and_grad(model.loss_and_output, has_aux=True)

    def start(broadcast, client_state):
        return broadcast.model, broadcast.model.trainable, empty_sums(model)

    def step(carry, batch, key, broadcast, client_state):
        local, theta, sums = carry
        batch = with_float_mask(batch)
        w = local.trainable

        def inner_step(theta, grads):
            return jax.tree.map(
                lambda t, g, wi: t - personal_lr * (g + lam * (t - wi)), theta, grads, w
            )

        def inner(index, theta):
            rng = jax.random.fold_in(key, index)
            _, grads = grad_fn(theta, local.non_trainable, batch, training=True, rng=rng)
            return inner_step(theta, grads)

        # The first inner step's forward pass gives the step's metrics and statistics.
        (_, output), grads = grad_fn(
            theta, local.non_trainable, batch, training=True, rng=jax.random.fold_in(key, 0)
        )
        solved = jax.lax.fori_loop(1, inner_steps, inner, inner_step(theta, grads))
        new_w = jax.tree.map(lambda wi, t: wi - eta * lam * (wi - t), w, solved)
        has = output.num_examples > 0
        return (
            ModelWeights(
                tree_where(has, new_w, w),
                tree_where(has, output.non_trainable, local.non_trainable),
            ),
            tree_where(has, solved, theta),
            add_output(model, sums, batch, output),
        )

    def finish(carry, broadcast, client_state) -> ClientOutput:
        local, _, sums = carry
        delta = jax.tree.map(jnp.subtract, local.trainable, broadcast.model.trainable)
        return ClientOutput.from_training(sums, delta, client_weight(sums.num_examples, weighting))

    return FederatedAlgorithm(
        name="pfedme",
        client_program=ClientProgram(start, step, finish),
        server_init=init_server_optimizer(server_opt),
        server_update=plain_server_update(server_opt),
        aggregator=delta_aggregator,
    )


@process_builder(pfedme)
def build_pfedme(*args, **kwargs) -> FederatedProcess:
    """pFedMe (Dinh et al. 2020, arXiv:2006.08848).

    Args:
      model: from `from_keras_model`.
      client_learning_rate: ``eta``, the local model's rate.
      server_optimizer: applied to ``-aggregate(delta)``; default
        ``optax.sgd(1.0)`` (``optax.sgd(beta)`` is the paper's ``beta``).
      lam: ``lambda > 0``, the Moreau envelope's regularization.
      personal_learning_rate: the inner solver's rate (stable for
        ``personal_learning_rate * lam < 2`` on top of the loss's own curvature).
      inner_steps: ``K``, the inner gradient steps per batch (each one
        gradient of the model: a round costs ``K`` times FedAvg's).
      weighting: 'num_examples' or 'uniform' (the paper's) for the deltas.
      aggregator: combines the deltas (default: the weighted mean).
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`; its ``loss`` and model metrics are the
      personalized models' training loss and metrics.
    """
