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

from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_number
from fedjax_keras.algorithms._fed_prox import proximal_term
from fedjax_keras.algorithms._metric_sums import MetricSums, finalize_sums, with_personal_models
from fedjax_keras.algorithms._schedules import run_hyperparams
from fedjax_keras.algorithms._server_step import server_optimizer_for
from fedjax_keras.algorithms._weighting import ClientWeighting, as_client_weighting, client_weight
from fedjax_keras.client import ClientOutput, ClientProgram, start_training, training_step
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model
from fedjax_keras.optimizers import as_optimizer

# Folded into a step's key for the personal model's randomness (Dropout): the
# global copy keeps the step key itself, so Ditto's global model is FedAvg's.
_PERSONAL_STREAM = 1


def ditto(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    lam: float,
    personal_optimizer=None,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """Ditto (Li et al. 2021, arXiv:2012.04221) as a `FederatedAlgorithm`.

    FedAvg's global model plus a personal model per client (its row of the
    client table, sized by the engine option ``population_size``) trained on
    ``f_k(v) + lam/2 ||v - w||^2``.

    Args:
      model: from `from_keras_model`.
      client_optimizer: the global copy's local optimizer.
      server_optimizer: applied to ``-aggregate(delta)``; default ``optax.sgd(1.0)``.
      lam: ``lambda >= 0``, the proximal strength.
      personal_optimizer: the personal models' optimizer (default: the client optimizer).
      weighting: `ClientWeighting` (or its value) of the global deltas.
      aggregator: combines the global deltas (default: the weighted mean).

    Example:
      >>> process = FederatedProcess(model, ditto(model, optax.sgd(0.05), lam=0.1))
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    lam = check_number(lam, "lam", minimum=0.0)
    delta_aggregator = aggregator_or_default(aggregator)
    template = model.initial_weights.trainable
    client_opt = as_optimizer(client_optimizer, template, argument="client_optimizer")
    personal_opt = (
        client_opt
        if personal_optimizer is None
        else as_optimizer(personal_optimizer, template, argument="personal_optimizer")
    )
    server_opt = server_optimizer_for(server_optimizer, template)
    global_step = training_step(model, client_opt)
    personal_step = training_step(model, personal_opt, proximal_term(lam))

    def start(broadcast, personal):
        return (
            start_training(model, client_opt, broadcast.model, run_hyperparams(broadcast)),
            start_training(model, personal_opt, personal, run_hyperparams(broadcast)),
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
        return ClientOutput.from_training(
            shared,
            {"delta": delta, "personal": personal_sums},
            client_weight(shared.num_examples, weighting),
            client_state=own.weights,
            report={"personal": finalize_sums(model, personal_sums)},
        )

    program = ClientProgram(start, step, finish)
    # A client never seen starts its personal model from the initial weights (v_k = w^0).
    return with_personal_models(
        "ditto", model, program, server_opt, delta_aggregator, lambda weights: weights
    )


@process_builder(ditto, shown_engine_options=("population_size",))
def build_ditto(*args, **kwargs) -> FederatedProcess:
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
