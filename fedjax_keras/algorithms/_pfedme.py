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
import optax

from fedjax_keras._tree import tree_where
from fedjax_keras.aggregation import Aggregator, check_aggregator, mean
from fedjax_keras.algorithms._checks import check_count, check_number
from fedjax_keras.algorithms._fed_avg import (
    WEIGHTINGS,
    client_weight,
    default_server_optimizer,
    pseudo_gradient_step,
)
from fedjax_keras.algorithms._metric_sums import add_output, empty_sums
from fedjax_keras.algorithms._registry import AlgorithmEntry, register
from fedjax_keras.client import ClientOutput, ClientProgram
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, check_choice, require_model
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import as_optimizer


def build_pfedme(
    model: Model,
    client_learning_rate: float,
    server_optimizer=None,
    *,
    lam: float = 15.0,
    personal_learning_rate: float = 0.05,
    inner_steps: int = 5,
    weighting: str = "num_examples",
    aggregator: Aggregator | None = None,
    **engine_options,
) -> FederatedProcess:
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
    require_model(model)
    check_choice(weighting, WEIGHTINGS, "weighting")
    eta = check_number(client_learning_rate, "client_learning_rate", minimum=0.0, strict=True)
    lam = check_number(lam, "lam", minimum=0.0, strict=True)
    personal_lr = check_number(
        personal_learning_rate, "personal_learning_rate", minimum=0.0, strict=True
    )
    inner_steps = check_count(inner_steps, "inner_steps")
    delta_aggregator = check_aggregator(mean() if aggregator is None else aggregator)
    template = model.initial_weights.trainable
    server_opt = as_optimizer(
        default_server_optimizer(server_optimizer), template, argument="server_optimizer"
    )
    grad_fn = jax.value_and_grad(model.loss_and_output, has_aux=True)

    def start(broadcast, client_state):
        return broadcast.model, broadcast.model.trainable, empty_sums(model)

    def step(carry, batch, key, broadcast, client_state):
        local, theta, sums = carry
        batch = {**batch, "mask": jnp.asarray(batch["mask"], jnp.float32)}
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
        return ClientOutput(
            update=delta,
            weight=client_weight(sums.num_examples, weighting),
            metrics=sums.metrics,
            loss_sum=sums.loss_sum,
            num_examples=sums.num_examples,
        )

    def server_update(state, mean_delta, key):
        del key
        return pseudo_gradient_step(server_opt, state, mean_delta), {}

    algorithm = FederatedAlgorithm(
        name="pfedme",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: (server_opt.init(weights.trainable), ()),
        server_update=server_update,
        aggregator=delta_aggregator,
    )
    return FederatedProcess(model, algorithm, **engine_options)


register(
    AlgorithmEntry(
        "pfedme",
        "build_pfedme",
        "local model pulled toward K-step solutions of the Moreau envelope "
        "min f_k(theta) + lam/2 ||theta - w_k||^2; server step beta = server lr",
        "Dinh et al. 2020, arXiv:2006.08848",
        lambda model, s, **engine: build_pfedme(
            model,
            s.client_lr,
            optax.sgd(s.server_rate(1.0)),
            lam=s.options["lam"],
            personal_learning_rate=s.options["personal_lr"],
            inner_steps=s.options["inner_steps"],
            **engine,
        ),
        options={"lam": 15.0, "personal_lr": 0.05, "inner_steps": 5},
    )
)
