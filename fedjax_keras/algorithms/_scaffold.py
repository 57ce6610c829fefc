"""SCAFFOLD: control variates correct the client drift of FedAvg.

Karimireddy et al., "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML 2020, arXiv:1910.06378; option II of the control-variate update.
Clients take local SGD steps on ``g + c - c_i``; after ``K`` steps of learning
rate ``lr`` a client sets ``c_i+ = c_i - c + (x - y_i) / (K * lr)``; the server
adds ``sum(c_i+ - c_i) / N`` to ``c``, ``N`` being the population size. Each
client's ``c_i`` is kept in the process state's client-state store.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras.aggregation import ClientOutput
from fedjax_keras.algorithms._fed_avg import (
    WEIGHTINGS,
    _check_choice,
    apply_pseudo_gradient,
    client_weight,
    default_server_optimizer,
)
from fedjax_keras.algorithms._process import AlgorithmSpec, FederatedProcess, require_model
from fedjax_keras.client import ClientProgram, TrainCarry, start_training, training_step
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import as_optimizer, from_optax


def build_scaffold(
    model: Model,
    client_learning_rate: float,
    server_optimizer=None,
    *,
    population_size: int | None = None,
    weighting: str = "num_examples",
    **engine_options,
) -> FederatedProcess:
    """SCAFFOLD with local SGD of rate ``client_learning_rate``.

    Args:
      model: from `from_keras_model`.
      client_learning_rate: the local SGD learning rate (SCAFFOLD's option II
        control-variate update assumes plain SGD).
      server_optimizer: applied to ``-mean(delta)``; default ``optax.sgd(1.0)``.
      population_size: ``N``, the number of clients in the population. When
        None, the number of distinct clients seen so far is used.
      weighting: 'num_examples' or 'uniform' for the model deltas.
      **engine_options: as in `build_fed_prox`.
    """
    require_model(model)
    _check_choice(weighting, WEIGHTINGS, "weighting")
    if (
        isinstance(client_learning_rate, bool)
        or not isinstance(client_learning_rate, (int, float))
        or not client_learning_rate > 0
    ):
        raise ValueError(f"client_learning_rate must be > 0; received {client_learning_rate!r}.")
    lr = float(client_learning_rate)
    template = model.initial_weights.trainable
    server_opt = as_optimizer(
        default_server_optimizer(server_optimizer), template, argument="server_optimizer"
    )

    def corrected(grads, trainable, context):
        broadcast, client_control = context
        return jax.tree.map(lambda g, c, ci: g + c - ci, grads, broadcast.extra, client_control)

    client_opt = from_optax(optax.sgd(lr))
    step = training_step(model, client_opt, corrected)

    def start(broadcast, client_control) -> TrainCarry:
        return start_training(model, client_opt, broadcast.model)

    def finish(carry: TrainCarry, broadcast, client_control) -> ClientOutput:
        delta = jax.tree.map(jnp.subtract, carry.weights.trainable, broadcast.model.trainable)
        steps = carry.num_steps.astype(jnp.float32)
        new_control = jax.tree.map(
            lambda ci, c, d: jnp.where(steps > 0, ci - c - d / (jnp.maximum(steps, 1.0) * lr), ci),
            client_control,
            broadcast.extra,
            delta,
        )
        return ClientOutput(
            update=delta,
            weight=client_weight(carry.num_examples, weighting),
            weighted_extras=(),
            summed_extras=jax.tree.map(jnp.subtract, new_control, client_control),
            metrics=carry.metrics,
            loss_sum=carry.loss_sum,
            num_examples=carry.num_examples,
            client_state=new_control,
        )

    def server_fn(model_weights, optimizer_state, control, acc, population):
        trainable, optimizer_state = apply_pseudo_gradient(
            server_opt, model_weights, optimizer_state, acc
        )
        control = jax.tree.map(lambda c, s: c + s / population, control, acc.summed_extras_sum)
        return ModelWeights(trainable, model_weights.non_trainable), optimizer_state, control

    zeros = lambda weights: jax.tree.map(jnp.zeros_like, weights.trainable)  # noqa: E731
    spec = AlgorithmSpec(
        "scaffold",
        ClientProgram(start, step, finish),
        server_fn,
        server_opt.init,
        init_extra=zeros,
        client_state_default=zeros,
    )
    return FederatedProcess(model, spec, population_size=population_size, **engine_options)
