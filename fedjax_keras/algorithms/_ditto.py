"""Ditto: a global model by FedAvg, and a personal model per client pulled toward it.

Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021, arXiv:2012.04221 (Algorithm 1).

Round ``t`` with server weights ``w``: every client runs the round's batches
once; on each batch ``b`` it takes two steps from the same batch:

- the global copy, as in FedAvg: ``w_k <- client_optimizer(w_k, grad f_k(w_k; b))``;
- its personal model ``v_k`` (kept in the state's client table between
  rounds), on the proximal objective ``f_k(v) + lam/2 ||v - w||^2`` toward the
  round's server weights: ``v_k <- personal_optimizer(v_k, grad f_k(v_k; b) +
  lam (v_k - w))`` (with SGD of rate ``eta``: ``v_k - eta (grad + lam (v_k - w))``).

The server averages the deltas ``w_k - w`` (the aggregator, by default
weighted by example counts) and steps its optimizer on ``-mean``, exactly
FedAvg: Ditto's global model is FedAvg's. ``lam = 0`` makes the personal model
plain local training; a large ``lam`` keeps it close to the global model. A
client seen for the first time starts its personal model from the initial
weights ``w^0`` (the paper's ``v_k = w^0``; with `set_model_weights`, from those).
"""

import jax
import jax.numpy as jnp
import optax

from fedjax_keras.aggregation import Aggregator, by_key, check_aggregator, mean
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._checks import check_number
from fedjax_keras.algorithms._fed_avg import (
    WEIGHTINGS,
    client_weight,
    default_server_optimizer,
    pseudo_gradient_step,
)
from fedjax_keras.algorithms._metric_sums import MetricSums, finalize_sums
from fedjax_keras.algorithms._registry import AlgorithmEntry, register
from fedjax_keras.client import ClientOutput, ClientProgram, start_training, training_step
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, check_choice, require_model
from fedjax_keras.models import Model
from fedjax_keras.optimizers import as_optimizer

# Folded into a step's key for the personal model's randomness (Dropout): the
# global copy keeps the step key itself, so Ditto's global model is FedAvg's.
_PERSONAL_STREAM = 1


def build_ditto(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    lam: float,
    personal_optimizer=None,
    weighting: str = "num_examples",
    aggregator: Aggregator | None = None,
    population_size: int | None = None,
    **engine_options,
) -> FederatedProcess:
    """Ditto (Li et al. 2021, arXiv:2012.04221): FedAvg plus proximal personal models.

    Args:
      model: from `from_keras_model`.
      client_optimizer: the global copy's local optimizer (anything
        `build_weighted_fed_avg` accepts).
      server_optimizer: applied to ``-aggregate(delta)``; default ``optax.sgd(1.0)``.
      lam: ``lambda >= 0``, the proximal strength pulling personal models
        toward the round's server weights.
      personal_optimizer: the personal models' optimizer (default: the client
        optimizer; the paper uses SGD for both).
      weighting: 'num_examples' or 'uniform' for the global deltas.
      aggregator: combines the global deltas (default: the weighted mean).
      population_size: rows of the client table (None: the first cohort's
        population).
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`. Its round metrics are FedAvg's (the global copies'
      training loss and metrics) plus ``personal/loss`` and ``personal/<metric>``:
      the personal models' training loss and metrics over the round (each batch
      before its step). Per client: ``clients/personal/loss``, ... The personal
      models are ``state.client_states.gather(positions)['algorithm']``
      (`ModelWeights`, rows [clients, ...]).

    Example:
      >>> process = build_ditto(model, optax.sgd(0.05), lam=0.1, batch_size=10)
      >>> state = process.initialize(seed=0)
      >>> out = process.next(state, data.sample_clients(5, seed=0))
      >>> "personal/loss" in out.metrics
      True
    """
    require_model(model)
    check_choice(weighting, WEIGHTINGS, "weighting")
    lam = check_number(lam, "lam", minimum=0.0)
    delta_aggregator = check_aggregator(mean() if aggregator is None else aggregator)
    template = model.initial_weights.trainable
    client_opt = as_optimizer(client_optimizer, template, argument="client_optimizer")
    personal_opt = (
        client_opt
        if personal_optimizer is None
        else as_optimizer(personal_optimizer, template, argument="personal_optimizer")
    )
    server_opt = as_optimizer(
        default_server_optimizer(server_optimizer), template, argument="server_optimizer"
    )

    def proximal(grads, trainable, context):
        broadcast, _ = context
        return jax.tree.map(
            lambda g, v, w: g + lam * (v - w), grads, trainable, broadcast.model.trainable
        )

    global_step = training_step(model, client_opt)
    personal_step = training_step(model, personal_opt, proximal)

    def start(broadcast, personal):
        return (
            start_training(model, client_opt, broadcast.model),
            start_training(model, personal_opt, personal),
        )

    def step(carry, batch, key, broadcast, personal):
        shared, own = carry
        personal_key = jax.random.fold_in(key, _PERSONAL_STREAM)
        return (
            global_step(shared, batch, key, broadcast, personal),
            personal_step(own, batch, personal_key, broadcast, personal),
        )

    def finish(carry, broadcast, personal) -> ClientOutput:
        shared, own = carry
        delta = jax.tree.map(jnp.subtract, shared.weights.trainable, broadcast.model.trainable)
        personal_sums = MetricSums(own.metrics, own.loss_sum, own.num_examples)
        return ClientOutput(
            update={"delta": delta, "personal": personal_sums},
            weight=client_weight(shared.num_examples, weighting),
            metrics=shared.metrics,
            loss_sum=shared.loss_sum,
            num_examples=shared.num_examples,
            client_state=own.weights,
            report={"personal": finalize_sums(model, personal_sums)},
        )

    def server_update(state, aggregate, key):
        del key
        state = pseudo_gradient_step(server_opt, state, aggregate["delta"])
        return state, finalize_sums(model, aggregate["personal"], "personal/")

    algorithm = FederatedAlgorithm(
        name="ditto",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: (server_opt.init(weights.trainable), ()),
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "personal": sum_aggregator()}),
        client_state_init=lambda weights: weights,
    )
    return FederatedProcess(model, algorithm, population_size=population_size, **engine_options)


register(
    AlgorithmEntry(
        "ditto",
        "build_ditto",
        "FedAvg plus a personal model per client trained on f_k(v) + lam/2 ||v - w||^2",
        "Li et al. 2021, arXiv:2012.04221",
        lambda model, s, **engine: build_ditto(
            model,
            optax.sgd(s.client_lr),
            optax.sgd(s.server_rate(1.0)),
            lam=s.options["lam"],
            population_size=s.population_size,
            **engine,
        ),
        options={"lam": 0.1},
    )
)
