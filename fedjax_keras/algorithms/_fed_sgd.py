"""FedSGD: each client sends one gradient at the server weights; the server steps.

McMahan et al. 2017, arXiv:1602.05629 (the FedSGD baseline). A client's
gradient is the example-weighted mean over all its batches (all its data, one
pass), so with weighting by examples the round equals one full-batch gradient
step over the union of the cohort's data.
"""

import jax
import jax.numpy as jnp

from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._checks import aggregator_or_default
from fedjax_keras.algorithms._metric_sums import add_output, empty_sums
from fedjax_keras.algorithms._server_step import (
    init_server_optimizer,
    plain_server_update,
    server_optimizer_for,
)
from fedjax_keras.algorithms._weighting import ClientWeighting, as_client_weighting, client_weight
from fedjax_keras.client import ClientOutput, ClientProgram, with_float_mask
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model


def fed_sgd(
    model: Model,
    server_optimizer=None,
    *,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """FedSGD (McMahan et al. 2017, arXiv:1602.05629) as a `FederatedAlgorithm`.

    Each client sends its example-weighted mean gradient over all its batches
    at the server weights; the server optimizer steps on their mean. Run it
    with ``epochs=1`` (and, as `build_fed_sgd` does, ``shuffle=False``: the
    order of the batches does not change a sum).

    Args:
      model: from `from_keras_model`.
      server_optimizer: applied to the averaged gradient; default ``optax.sgd(0.1)``.
      weighting: `ClientWeighting` (or its value) of the gradients.
      aggregator: combines the clients' negated gradients (default: the weighted mean).
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    template = model.initial_weights.trainable
    server_opt = server_optimizer_for(server_optimizer, template, default_learning_rate=0.1)

    def start(broadcast, client_state):
        return jax.tree.map(jnp.zeros_like, broadcast.model.trainable), empty_sums(model)

    def step(carry, batch, key, broadcast, client_state):
        grad_sum, sums = carry
        batch = with_float_mask(batch)
        weights = broadcast.model
        grad_fn = jax.grad(model.loss_and_output, has_aux=True)
        grads, output = grad_fn(
            weights.trainable, weights.non_trainable, batch, training=True, rng=key
        )
        count = output.num_examples.astype(jnp.float32)
        has = output.num_examples > 0
        grad_sum = jax.tree.map(lambda s, g: s + jnp.where(has, g * count, 0.0), grad_sum, grads)
        return grad_sum, add_output(model, sums, batch, output)

    def finish(carry, broadcast, client_state) -> ClientOutput:
        grad_sum, sums = carry
        mean_grad = jax.tree.map(lambda g: g / jnp.maximum(sums.num_examples, 1), grad_sum)
        # The engine aggregates deltas and steps on -mean(delta): send -gradient.
        negated = jax.tree.map(jnp.negative, mean_grad)
        return ClientOutput.from_training(
            sums, negated, client_weight(sums.num_examples, weighting)
        )

    return FederatedAlgorithm(
        name="fed_sgd",
        client_program=ClientProgram(start, step, finish),
        server_init=init_server_optimizer(server_opt),
        server_update=plain_server_update(server_opt),
        aggregator=aggregator_or_default(aggregator),
    )


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
    options = {"shuffle": False, **engine_options}
    if options.get("epochs", 1) != 1:
        raise ValueError(
            "FedSGD computes one gradient per client; epochs must be 1, not "
            f"{options.get('epochs')}."
        )
    algorithm = fed_sgd(model, server_optimizer, weighting=weighting, aggregator=aggregator)
    return FederatedProcess(model, algorithm, **options)
