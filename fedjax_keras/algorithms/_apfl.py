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
from fedjax_keras.aggregation import Aggregator, by_key, check_aggregator, mean
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._checks import check_number
from fedjax_keras.algorithms._fed_avg import (
    WEIGHTINGS,
    client_weight,
    default_server_optimizer,
    pseudo_gradient_step,
)
from fedjax_keras.algorithms._metric_sums import add_output, empty_sums, finalize_sums
from fedjax_keras.algorithms._registry import AlgorithmEntry, register
from fedjax_keras.client import ClientOutput, ClientProgram, start_training, training_step
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, check_choice, require_model
from fedjax_keras.models import Model
from fedjax_keras.optimizers import as_optimizer, from_optax

_MIXED_STREAM = 1  # folded into a step's key for the mixed model's randomness


def build_apfl(
    model: Model,
    client_learning_rate: float,
    server_optimizer=None,
    *,
    alpha: float = 0.25,
    alpha_learning_rate: float = 0.0,
    weighting: str = "num_examples",
    aggregator: Aggregator | None = None,
    population_size: int | None = None,
    **engine_options,
) -> FederatedProcess:
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
    require_model(model)
    check_choice(weighting, WEIGHTINGS, "weighting")
    lr = check_number(client_learning_rate, "client_learning_rate", minimum=0.0, strict=True)
    alpha = check_number(alpha, "alpha", minimum=0.0, maximum=1.0)
    alpha_lr = check_number(alpha_learning_rate, "alpha_learning_rate", minimum=0.0)
    delta_aggregator = check_aggregator(mean() if aggregator is None else aggregator)
    template = model.initial_weights.trainable
    server_opt = as_optimizer(
        default_server_optimizer(server_optimizer), template, argument="server_optimizer"
    )
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
        batch = {**batch, "mask": jnp.asarray(batch["mask"], jnp.float32)}
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
        return ClientOutput(
            update={"delta": delta, "personal": sums},
            weight=client_weight(shared.num_examples, weighting),
            metrics=shared.metrics,
            loss_sum=shared.loss_sum,
            num_examples=shared.num_examples,
            client_state={"personal": personal, "alpha": a},
            report={"alpha": a, "personal": finalize_sums(model, sums)},
        )

    def server_update(state, aggregate, key):
        del key
        state = pseudo_gradient_step(server_opt, state, aggregate["delta"])
        return state, finalize_sums(model, aggregate["personal"], "personal/")

    algorithm = FederatedAlgorithm(
        name="apfl",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: (server_opt.init(weights.trainable), ()),
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "personal": sum_aggregator()}),
        client_state_init=lambda weights: {
            "personal": weights.trainable,
            "alpha": jnp.asarray(alpha, jnp.float32),
        },
    )
    return FederatedProcess(model, algorithm, population_size=population_size, **engine_options)


register(
    AlgorithmEntry(
        "apfl",
        "build_apfl",
        "personal model v_k mixed with the global one as alpha v + (1 - alpha) w; "
        "alpha (option mix) fixed (mix_lr=0) or adapted per client",
        "Deng et al. 2020, arXiv:2003.13461",
        lambda model, s, **engine: build_apfl(
            model,
            s.client_lr,
            optax.sgd(s.server_rate(1.0)),
            alpha=s.options["mix"],
            alpha_learning_rate=s.options["mix_lr"],
            population_size=s.population_size,
            **engine,
        ),
        # Not 'alpha': the command line's --alpha is the synthetic task's heterogeneity.
        options={"mix": 0.25, "mix_lr": 0.0},
    )
)
