"""Agnostic federated learning: a model good for every mixture of domains.

Mohri, Sivek and Suresh, "Agnostic Federated Learning", ICML 2019,
arXiv:1902.00146. It solves ``min_w max_{lambda in simplex} sum_k lambda_k
L_k(w)``, ``L_k`` being the mean loss over domain ``k``'s examples, by
alternating a descent step on ``w`` and a projected ascent step on
``lambda`` (their Stochastic-AFL); the per-domain losses drive ``lambda``.

Each example belongs to a domain in ``[0, num_domains)``, given by a pure
function of the batch, ``domain_fn(x, y) -> int32 [batch]`` (by default the
label: the paper's experiment whose domains are classes). A round with
server weights ``w`` and domain weights ``lambda`` has two passes over its
cohort (the engine's `FirstPass`):

- first pass, at ``w`` (inference mode, no training): every client sums per
  domain its losses ``S_ik`` and examples ``n_ik``; the server forms this
  round's domain counts ``N_k = sum_i n_ik`` and losses ``L_k = sum_i S_ik /
  N_k`` (0 for a domain without examples);
- training pass: client ``i`` trains as in FedAvg (the client optimizer) and
  is weighted ``beta_i = sum_k lambda_k n_ik / N_k``: its share of the
  mixture ``sum_k lambda_k L_k``, since ``L_k`` weighs each of domain
  ``k``'s ``N_k`` examples ``1 / N_k``. The weights add up to ``lambda``'s
  mass on the domains present, ``beta_i <= 1``, and the (weighted) mean of
  the deltas is FedAvg's step on that mixture (exactly its gradient for one
  local step when each client holds one domain, the paper's setting of
  domains as client groups; FedAvg's usual approximation otherwise);
- the server steps its optimizer on ``-mean`` and, simultaneously as the
  paper's Stochastic-AFL (both steps at ``(w, lambda)``), ``lambda <-
  Proj_simplex(lambda + domain_lr L)`` ('projected', the paper's) or
  ``lambda <- lambda exp(domain_lr L) / Z`` ('exponentiated', as FedJAX's).

Why a first pass: ``beta_i`` divides by the round's per-domain counts, which
no client knows alone. Dividing by the previous round's counts instead
(this module's former one-pass rule, FedJAX's with a window of one) gives a
client weights of ``n_ik / N_k(previous)``, unbounded under label skew:
under Dirichlet(0.1) one client with many examples of a label rare in the
previous cohort carried whole rounds and the model stayed near chance
(docs/algorithms.md). The first pass is a forward pass only; the training
pass no longer scores ``w``, so a round costs about what it did.

The model's loss includes its regularization losses; they shift every
``L_k`` by the same amount, which changes neither update of ``lambda``.
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.aggregation import Aggregator, by_key
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_count, check_number
from fedjax_keras.algorithms._metric_sums import MetricSums
from fedjax_keras.algorithms._schedules import run_hyperparams
from fedjax_keras.algorithms._server_step import pseudo_gradient_step, server_optimizer_for
from fedjax_keras.client import ClientOutput, ClientProgram, start_training, training_step
from fedjax_keras.engine import (
    FederatedAlgorithm,
    FederatedProcess,
    FirstPass,
    check_choice,
    require_model,
)
from fedjax_keras.models import Model
from fedjax_keras.optimizers import as_optimizer

DOMAIN_UPDATES = ("projected", "exponentiated")


def project_simplex(v: jax.Array) -> jax.Array:
    """The Euclidean projection of ``v`` [p] onto the probability simplex.

    The sort-based rule (Duchi, Shalev-Shwartz, Singer and Chandra, ICML 2008):
    ``max(v - theta, 0)`` with ``theta`` chosen so the result sums to 1.
    """
    u = jnp.sort(v)[::-1]
    cumulative = jnp.cumsum(u) - 1.0
    index = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
    rho = jnp.sum(u - cumulative / index > 0)
    theta = cumulative[rho - 1] / rho.astype(v.dtype)
    return jnp.maximum(v - theta, 0.0)


def _label_domains(x, y):
    del x
    return jnp.asarray(y).astype(jnp.int32).reshape(-1)


def _num_classes(model: Model) -> int:
    spec = jax.eval_shape(
        lambda w, x: model.apply(w, x), model.initial_weights, model.input_spec["x"]
    )
    leaves = jax.tree.leaves(spec)
    if len(leaves) != 1 or len(leaves[0].shape) != 2:
        raise ValueError(
            "num_domains=None takes the domains from the labels and needs a model with one "
            f"output [batch, classes]; this model outputs {spec}. Pass num_domains= (and a "
            "domain_fn)."
        )
    return int(leaves[0].shape[1])


def agnostic_fed_avg(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    num_domains: int | None = None,
    domain_fn: Callable | None = None,
    domain_learning_rate: float = 0.1,
    domain_update: str = "projected",
    initial_domain_weights: Sequence[float] | None = None,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """Agnostic federated averaging (Mohri et al. 2019, arXiv:1902.00146) as a `FederatedAlgorithm`.

    ``min_w max_lambda sum_k lambda_k L_k(w)``: a first pass scores ``w`` per
    domain over the cohort (``L_k``, ``N_k``); clients then train as in FedAvg,
    weighted ``beta_i = sum_k lambda_k n_ik / N_k``, and the server moves
    ``lambda`` toward the domains of highest loss (module docstring).

    Args:
      model: from `from_keras_model`.
      client_optimizer: the local optimizer.
      server_optimizer: applied to ``-aggregate(delta)``; default ``optax.sgd(1.0)``.
      num_domains: ``p``; None: the model's number of classes (domains are labels).
      domain_fn: ``(x, y) -> int32 [batch]`` in ``[0, p)``, a pure jnp
        function of a batch (leaves [batch, ...]); None: the integer label
        (sparse labels ``y`` [batch]). Out-of-range values count in no domain.
      domain_learning_rate: ``domain_lr >= 0``, the step on ``lambda``.
      domain_update: 'projected' (the paper's) or 'exponentiated'.
      initial_domain_weights: ``lambda`` at the start (p non-negative numbers
        summing to 1); default uniform.
      aggregator: combines the deltas with weights ``beta_i`` (default: the mean).

    Example:
      >>> process = FederatedProcess(model, agnostic_fed_avg(model, optax.sgd(0.05)))
    """
    require_model(model)
    check_choice(domain_update, DOMAIN_UPDATES, "domain_update")
    if domain_fn is not None and not callable(domain_fn):
        raise TypeError(f"domain_fn must be a function (x, y) -> int32 [batch]; got {domain_fn!r}.")
    if num_domains is None:
        if domain_fn is not None:
            raise ValueError("A domain_fn needs num_domains=: how many domains it returns.")
        p = _num_classes(model)
    else:
        p = check_count(num_domains, "num_domains")
    gamma = check_number(domain_learning_rate, "domain_learning_rate", minimum=0.0)
    if initial_domain_weights is None:
        initial = np.full(p, 1.0 / p, np.float32)
    else:
        initial = np.asarray(initial_domain_weights, np.float32)
        if initial.shape != (p,) or np.any(initial < 0) or abs(initial.sum() - 1) > 1e-5:
            raise ValueError(
                f"initial_domain_weights must be {p} non-negative numbers summing to 1; "
                f"received {initial_domain_weights!r}."
            )
    domains_of = _label_domains if domain_fn is None else domain_fn
    template = model.initial_weights.trainable
    client_opt = as_optimizer(client_optimizer, template, argument="client_optimizer")
    server_opt = server_optimizer_for(server_optimizer, template)
    train_step = training_step(model, client_opt)

    def example_losses(weights, batch):
        def one(x, y):
            single = jax.tree.map(lambda leaf: leaf[None], {"x": x, "y": y})
            return model.loss(weights, single, training=False)

        return jax.vmap(one)(batch["x"], batch["y"])

    def domain_counts(batch, mask):
        domains = jnp.where(mask, domains_of(batch["x"], batch["y"]), p)  # padding: no domain
        return domains, jax.ops.segment_sum(mask.astype(jnp.float32), domains, p)

    # First pass: the server model's per-domain loss and example sums over the cohort.
    def score_start(broadcast, client_state):
        zero = jnp.zeros((), jnp.float32)
        sums = MetricSums(model.init_metrics(), zero, jnp.zeros((), jnp.int32))
        return sums, jnp.zeros((p,), jnp.float32), jnp.zeros((p,), jnp.float32)

    def score_step(carry, batch, key, broadcast, client_state):
        sums, loss_sums, counts = carry
        mask = jnp.asarray(batch["mask"], bool)
        clean = {**batch, "mask": mask.astype(jnp.float32)}
        losses = jnp.where(mask, example_losses(broadcast.model, clean), 0.0)
        domains, batch_counts = domain_counts(batch, mask)
        sums = MetricSums(
            sums.metrics,
            sums.loss_sum + jnp.sum(losses),
            sums.num_examples + jnp.sum(mask).astype(jnp.int32),
        )
        return sums, loss_sums + jax.ops.segment_sum(losses, domains, p), counts + batch_counts

    def score_finish(carry, broadcast, client_state) -> ClientOutput:
        sums, loss_sums, counts = carry
        update = {"loss_sums": loss_sums, "counts": counts}
        return ClientOutput.from_training(sums, update, jnp.ones((), jnp.float32))

    def apply_scores(algorithm_state, aggregate):
        counts = aggregate["counts"]
        seen = counts > 0
        losses = jnp.where(seen, aggregate["loss_sums"] / jnp.where(seen, counts, 1), 0.0)
        return {**algorithm_state, "domain_counts": counts, "domain_losses": losses}

    first_pass = FirstPass(
        ClientProgram(score_start, score_step, score_finish),
        apply_scores,
        by_key({"loss_sums": sum_aggregator(), "counts": sum_aggregator()}),
    )

    # Training pass: FedAvg, each client weighted by its share of the mixture.
    def start(broadcast, client_state):
        train = start_training(model, client_opt, broadcast.model, run_hyperparams(broadcast))
        return train, jnp.zeros((p,), jnp.float32)

    def step(carry, batch, key, broadcast, client_state):
        train, counts = carry
        _, batch_counts = domain_counts(batch, jnp.asarray(batch["mask"], bool))
        return train_step(train, batch, key, broadcast, client_state), counts + batch_counts

    def finish(carry, broadcast, client_state) -> ClientOutput:
        train, counts = carry
        weights = broadcast.algorithm_state["domain_weights"]
        totals = broadcast.algorithm_state["domain_counts"]
        delta = jax.tree.map(jnp.subtract, train.weights.trainable, broadcast.model.trainable)
        # A domain this client holds has totals > 0 (its own examples are among them);
        # jnp.where keeps 0 / 0 out of the others.
        share = jnp.where(totals > 0, counts / jnp.where(totals > 0, totals, 1.0), 0.0)
        return ClientOutput.from_training(train, delta, jnp.sum(weights * share))

    def server_update(state, aggregate, key):
        del key
        state = pseudo_gradient_step(server_opt, state, aggregate)
        losses = state.algorithm_state["domain_losses"]
        counts = state.algorithm_state["domain_counts"]
        weights = state.algorithm_state["domain_weights"]
        if domain_update == "projected":
            new_weights = project_simplex(weights + gamma * losses)
        else:
            raised = weights * jnp.exp(gamma * (losses - jnp.max(losses)))
            new_weights = raised / jnp.sum(raised)
        algorithm_state = {**state.algorithm_state, "domain_weights": new_weights}
        return state.replace(algorithm_state=algorithm_state), {
            "domain_weights": new_weights,
            "domain_losses": losses,
            "domain_examples": counts.astype(jnp.int32),
            "worst_domain_loss": jnp.max(jnp.where(counts > 0, losses, -jnp.inf)),
        }

    zeros = jnp.zeros((p,), jnp.float32)
    return FederatedAlgorithm(
        name="agnostic_fed_avg",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda w: (
            server_opt.init(w.trainable),
            {
                "domain_weights": jnp.asarray(initial),
                "domain_counts": zeros,
                "domain_losses": zeros,
            },
        ),
        server_update=server_update,
        aggregator=aggregator_or_default(aggregator),
        first_pass=first_pass,
    )


@process_builder(agnostic_fed_avg)
def build_agnostic_fed_avg(*args, **kwargs) -> FederatedProcess:
    """Agnostic federated averaging (Mohri et al. 2019, arXiv:1902.00146).

    Returns:
      A `FederatedProcess`. Round metrics: FedAvg's, plus ``domain_weights``
      (``lambda`` after the round), ``domain_losses`` (``L_k`` of the round's
      server model), ``domain_examples`` (arrays [p]) and ``worst_domain_loss``.
      ``state.algorithm_state`` is ``{'domain_weights', 'domain_counts',
      'domain_losses'}`` (the last two: the latest round's first pass), and the
      first pass adds ``first_pass/loss`` (inference loss of ``w``) and its
      client counts. It cannot run under `Sweep` (two passes per round).

    Example:
      >>> process = build_agnostic_fed_avg(model, optax.sgd(0.05), domain_learning_rate=0.5,
      ...                                  batch_size=10)
      >>> out = process.next(process.initialize(0), data.sample_clients(5, seed=0))
      >>> float(out.metrics["domain_weights"].sum())
      1.0
    """
