"""APFL: each client mixes a personal model with the global one, ``alpha v + (1 - alpha) w``.

Deng, Kamani and Mahdavi, "Adaptive Personalized Federated Learning", 2020,
arXiv:2003.13461 (Algorithm 1, with the adaptive ``alpha`` of its Section 3).

Client ``i`` keeps a personal model ``v_i`` and a mixing weight ``alpha_i`` in
the state's client table. In a round it starts its copy of the global model
at the server weights, ``w_i = w``, and on each batch ``b`` (one pass, plain
SGD of rate ``eta``, every right-hand side taken before the step):

    v_bar   = alpha_i v_i + (1 - alpha_i) w_i           (the personalized model)
    g       = grad f_i(v_bar; b)
    w_i    <- w_i - eta grad f_i(w_i; b)                  (FedAvg's local step)
    v_i    <- v_i - eta alpha_i g                          (chain rule through v_bar)
    alpha_i <- clip(alpha_i - eta_alpha <v_i - w_i, g>, 0, 1)   (when adaptive)

The server averages the deltas ``w_i - w`` and steps its optimizer on
``-mean``: the global model is FedAvg's. ``alpha = 0`` leaves ``v_i`` unused
(the personalized model is the global one); ``alpha = 1`` is local training
of ``v_i``. A client seen for the first time starts from ``v_i = w^0`` (the
initial weights, as the paper's ``v_i^(0) = w^(0)``) and ``alpha_i = alpha``.
The mixed model uses the global copy's non-trainable weights (BatchNorm
statistics); its own updates of them are dropped.
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras._tree import tree_where
from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_number
from fedjax_keras.algorithms._metric_sums import (
    add_output,
    empty_sums,
    finalize_sums,
    with_personal_models,
)
from fedjax_keras.algorithms._server_step import server_optimizer_for
from fedjax_keras.algorithms._weighting import ClientWeighting, as_client_weighting, client_weight
from fedjax_keras.client import (
    ClientOutput,
    ClientProgram,
    start_training,
    training_step,
    with_float_mask,
)
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model
from fedjax_keras.optimizers import from_optax

_MIXED_STREAM = 1  # folded into a step's key for the mixed model's randomness


def apfl(
    model: Model,
    client_learning_rate: float,
    server_optimizer=None,
    *,
    alpha: float = 0.25,
    alpha_learning_rate: float = 0.0,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """APFL (Deng et al. 2020, arXiv:2003.13461) as a `FederatedAlgorithm`.

    Each client keeps ``v_i`` and ``alpha_i`` in its row of the client table
    (sized by the engine option ``population_size``) and trains ``v_i``
    through the mixture ``alpha_i v_i + (1 - alpha_i) w`` (module docstring).

    Args:
      model: from `from_keras_model`.
      client_learning_rate: ``eta``, the local SGD rate of ``w_i`` and ``v_i``.
      server_optimizer: applied to ``-aggregate(delta)``; default ``optax.sgd(1.0)``.
      alpha: the initial mixing weight in [0, 1].
      alpha_learning_rate: ``eta_alpha``; 0 keeps ``alpha`` fixed.
      weighting: `ClientWeighting` (or its value) of the global deltas.
      aggregator: combines the global deltas (default: the weighted mean).

    Example:
      >>> process = FederatedProcess(model, apfl(model, 0.05, alpha=0.5), batch_size=10)
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    lr = check_number(client_learning_rate, "client_learning_rate", minimum=0.0, strict=True)
    alpha = check_number(alpha, "alpha", minimum=0.0, maximum=1.0)
    alpha_lr = check_number(alpha_learning_rate, "alpha_learning_rate", minimum=0.0)
    delta_aggregator = aggregator_or_default(aggregator)
    server_opt = server_optimizer_for(server_optimizer, model.initial_weights.trainable)
    sgd = from_optax(optax.sgd(lr))
    global_step = training_step(model, sgd)
    grad_fn = jax.value_and_grad(model.loss_and_output, has_aux=True)

    def start(broadcast, row):
        return (
            start_training(model, sgd, broadcast.model),
            row["personal"],
            jnp.asarray(row["alpha"], jnp.float32),
            empty_sums(model),
        )

    def step(carry, batch, key, broadcast, row):
        shared, personal, a, sums = carry
        batch = with_float_mask(batch)
        w = shared.weights
        mixed = jax.tree.map(lambda v, wi: a * v + (1.0 - a) * wi, personal, w.trainable)
        (_, output), g = grad_fn(
            mixed,
            w.non_trainable,
            batch,
            training=True,
            rng=jax.random.fold_in(key, _MIXED_STREAM),
        )
        new_personal = jax.tree.map(lambda v, gi: v - lr * a * gi, personal, g)
        slope = jax.tree.reduce(
            jnp.add,
            jax.tree.map(lambda v, wi, gi: jnp.vdot(v - wi, gi), personal, w.trainable, g),
        )
        new_a = jnp.clip(a - alpha_lr * slope, 0.0, 1.0) if alpha_lr > 0 else a
        has = output.num_examples > 0
        return (
            global_step(shared, batch, key, broadcast, row),
            tree_where(has, new_personal, personal),
            jnp.where(has, new_a, a),
            add_output(model, sums, batch, output),
        )

    def finish(carry, broadcast, row) -> ClientOutput:
        shared, personal, a, sums = carry
        delta = jax.tree.map(jnp.subtract, shared.weights.trainable, broadcast.model.trainable)
        return ClientOutput.from_training(
            shared,
            {"delta": delta, "personal": sums},
            client_weight(shared.num_examples, weighting),
            client_state={"personal": personal, "alpha": a},
            report={"alpha": a, "personal": finalize_sums(model, sums)},
        )

    def first_row(weights):  # a client never seen: v_i = w^0, alpha_i = alpha
        return {"personal": weights.trainable, "alpha": jnp.asarray(alpha, jnp.float32)}

    program = ClientProgram(start, step, finish)
    return with_personal_models("apfl", model, program, server_opt, delta_aggregator, first_row)


@process_builder(apfl, shown_engine_options=("population_size",))
def build_apfl(*args, **kwargs) -> FederatedProcess:
    """APFL (Deng et al. 2020, arXiv:2003.13461): personal models mixed with the global one.

    Args:
      model: from `from_keras_model`.
      client_learning_rate: ``eta``, the local SGD rate of both ``w_i`` and
        ``v_i`` (the paper's update rules are plain SGD).
      server_optimizer: applied to ``-aggregate(delta)``; default ``optax.sgd(1.0)``.
      alpha: the mixing weight in [0, 1] (every client's initial one).
      alpha_learning_rate: ``eta_alpha``; 0 (default) keeps ``alpha`` fixed,
        a positive rate adapts each client's own ``alpha_i`` by SGD.
      weighting: 'num_examples' or 'uniform' for the global deltas.
      aggregator: combines the global deltas (default: the weighted mean).
      population_size: rows of the client table (None: the first cohort's).
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`. Round metrics: FedAvg's (the global copies'
      training loss and metrics), plus ``personal/loss`` and
      ``personal/<metric>`` of the mixed models over the round (each batch
      before its step). Per client: ``clients/alpha`` (after the round) and
      ``clients/personal/...``. The client table's rows are ``{'personal':
      v_i (trainable weights), 'alpha': alpha_i}``.

    Example:
      >>> process = build_apfl(model, 0.05, alpha=0.5, alpha_learning_rate=0.1, batch_size=10)
      >>> out = process.next(process.initialize(0), data.sample_clients(5, seed=0))
      >>> out.metrics["clients/alpha"].shape
      (5,)
    """
