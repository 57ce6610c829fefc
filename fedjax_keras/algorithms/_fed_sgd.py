"""FedSGD: each client sends one gradient at the server weights; the server steps.

McMahan et al. 2017, arXiv:1602.05629 (the FedSGD baseline). A client's
gradient is the example-weighted mean over all its batches (all its data, one
pass), so with weighting by examples the round equals one full-batch gradient
step over the union of the cohort's data.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras.aggregation import Aggregator, check_aggregator, mean
from fedjax_keras.algorithms._fed_avg import WEIGHTINGS, client_weight, pseudo_gradient_step
from fedjax_keras.client import ClientOutput, ClientProgram
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, check_choice, require_model
from fedjax_keras.models import Model
from fedjax_keras.optimizers import as_optimizer


def build_fed_sgd(
    model: Model,
    server_optimizer=None,
    *,
    weighting: str = "num_examples",
    aggregator: Aggregator | None = None,
    **engine_options,
) -> FederatedProcess:
    """FedSGD (TFF: ``build_fed_sgd``): the server optimizer steps on the mean gradient.

    Args:
      model: from `from_keras_model`.
      server_optimizer: applied to the averaged gradient; default ``optax.sgd(0.1)``.
      weighting: 'num_examples' or 'uniform'.
      aggregator: combines the clients' negated gradients (default: the weighted mean).
      **engine_options: see `build_weighted_fed_avg` (``epochs`` must stay 1).
    """
    require_model(model)
    check_choice(weighting, WEIGHTINGS, "weighting")
    options = {"shuffle": False, **engine_options}
    if options.get("epochs", 1) != 1:
        raise ValueError(
            "FedSGD computes one gradient per client; epochs must be 1, not "
            f"{options.get('epochs')}."
        )
    template = model.initial_weights.trainable
    server_opt = as_optimizer(
        optax.sgd(0.1) if server_optimizer is None else server_optimizer,
        template,
        argument="server_optimizer",
    )

    def start(broadcast, client_state):
        zeros = jax.tree.map(jnp.zeros_like, broadcast.model.trainable)
        return (zeros, model.init_metrics(), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def step(carry, batch, key, broadcast, client_state):
        grad_sum, metrics, loss_sum, num_examples = carry
        batch = {**batch, "mask": jnp.asarray(batch["mask"], jnp.float32)}
        weights = broadcast.model
        grad_fn = jax.value_and_grad(model.loss_and_output, has_aux=True)
        (loss, output), grads = grad_fn(
            weights.trainable, weights.non_trainable, batch, training=True, rng=key
        )
        count = output.num_examples.astype(jnp.float32)
        has = output.num_examples > 0
        grad_sum = jax.tree.map(lambda s, g: s + jnp.where(has, g * count, 0.0), grad_sum, grads)
        return (
            grad_sum,
            model.update_metrics(metrics, batch, output.predictions, output.output_masks),
            loss_sum + jnp.where(has, loss * count, 0.0),
            num_examples + output.num_examples,
        )

    def finish(carry, broadcast, client_state) -> ClientOutput:
        grad_sum, metrics, loss_sum, num_examples = carry
        mean_grad = jax.tree.map(lambda g: g / jnp.maximum(num_examples, 1), grad_sum)
        return ClientOutput(
            # The engine aggregates deltas and steps on -mean(delta): send -gradient.
            update=jax.tree.map(jnp.negative, mean_grad),
            weight=client_weight(num_examples, weighting),
            metrics=metrics,
            loss_sum=loss_sum,
            num_examples=num_examples,
        )

    algorithm = FederatedAlgorithm(
        name="fed_sgd",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: (server_opt.init(weights.trainable), ()),
        server_update=lambda state, aggregate, key: (
            pseudo_gradient_step(server_opt, state, aggregate),
            {},
        ),
        aggregator=check_aggregator(mean() if aggregator is None else aggregator),
    )
    return FederatedProcess(model, algorithm, **options)
