"""Agnostic federated learning: a model good for every mixture of domains.

Mohri, Sivek and Suresh, "Agnostic Federated Learning", ICML 2019,
arXiv:1902.00146. It solves ``min_w max_{lambda in simplex} sum_k lambda_k
L_k(w)``, ``L_k`` being the mean loss over domain ``k``'s examples, by
alternating a descent step on ``w`` and a projected ascent step on
``lambda`` (their Stochastic-AFL); the per-domain losses drive ``lambda``.

Each example belongs to a domain in ``[0, num_domains)``, given by a pure
function of the batch, ``domain_fn(x, y) -> int32 [batch]`` (by default the
label: the paper's experiment whose domains are classes). A round with
server weights ``w`` and domain weights ``lambda``:

- client ``i`` trains as in FedAvg (one pass, the client optimizer) and, in
  the same pass, scores ``w`` itself on each example (inference mode), summing
  per domain the losses ``S_ik`` and the example counts ``n_ik``;
- its aggregation weight is ``beta_i = sum_k lambda_k n_ik / N_k``, where
  ``N_k`` is domain ``k``'s example count in the previous round (1 before the
  first), so the weighted mean of the deltas estimates a step on
  ``sum_k lambda_k L_k`` (exact when a round's domain counts equal the
  previous round's); the server steps its optimizer on ``-mean``;
- the server forms ``L_k = sum_i S_ik / sum_i n_ik`` (0 for a domain without
  examples) and updates ``lambda <- Proj_simplex(lambda + domain_lr L)``
  ('projected', the paper's) or ``lambda <- lambda exp(domain_lr L) / Z``
  ('exponentiated', as FedJAX's agnostic FedAvg); then ``N_k <- sum_i n_ik``
  for the domains seen.

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
from fedjax_keras.algorithms._schedules import run_hyperparams
from fedjax_keras.algorithms._server_step import pseudo_gradient_step, server_optimizer_for
from fedjax_keras.client import ClientOutput, ClientProgram, start_training, training_step
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, check_choice, require_model
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

    ``min_w max_lambda sum_k lambda_k L_k(w)``: clients weigh ``beta_i =
    sum_k lambda_k n_ik / N_k``, the server moves ``lambda`` toward the
    domains of highest loss (module docstring).

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
    # The deltas with the user's aggregator; the per-domain loss and example sums added up.
    update_aggregator = by_key(
        {"delta": aggregator_or_default(aggregator), "domains": sum_aggregator()}
    )
    template = model.initial_weights.trainable
    client_opt = as_optimizer(client_optimizer, template, argument="client_optimizer")
    server_opt = server_optimizer_for(server_optimizer, template)
    train_step = training_step(model, client_opt)

    def example_losses(weights, batch):
        def one(x, y):
            single = jax.tree.map(lambda leaf: leaf[None], {"x": x, "y": y})
            return model.loss(weights, single, training=False)

        return jax.vmap(one)(batch["x"], batch["y"])

    def start(broadcast, client_state):
        zeros = jnp.zeros((p,), jnp.float32)
        train = start_training(model, client_opt, broadcast.model, run_hyperparams(broadcast))
        return train, zeros, zeros

    def step(carry, batch, key, broadcast, client_state):
        train, loss_sums, counts = carry
        mask = jnp.asarray(batch["mask"], bool)
        clean = {**batch, "mask": mask.astype(jnp.float32)}
        losses = jnp.where(mask, example_losses(broadcast.model, clean), 0.0)
        domains = jnp.where(mask, domains_of(batch["x"], batch["y"]), p)  # padding: no domain
        return (
            train_step(train, batch, key, broadcast, client_state),
            loss_sums + jax.ops.segment_sum(losses, domains, p),
            counts + jax.ops.segment_sum(mask.astype(jnp.float32), domains, p),
        )

    def finish(carry, broadcast, client_state) -> ClientOutput:
        train, loss_sums, counts = carry
        weights = broadcast.algorithm_state["domain_weights"]
        previous = broadcast.algorithm_state["domain_counts"]
        delta = jax.tree.map(jnp.subtract, train.weights.trainable, broadcast.model.trainable)
        domains = {"loss_sums": loss_sums, "counts": counts}
        weight = jnp.sum(weights * counts / previous)
        return ClientOutput.from_training(train, {"delta": delta, "domains": domains}, weight)

    def server_update(state, aggregate, key):
        del key
        state = pseudo_gradient_step(server_opt, state, aggregate["delta"])
        counts = aggregate["domains"]["counts"]
        seen = counts > 0
        losses = jnp.where(seen, aggregate["domains"]["loss_sums"] / jnp.where(seen, counts, 1), 0)
        weights = state.algorithm_state["domain_weights"]
        if domain_update == "projected":
            new_weights = project_simplex(weights + gamma * losses)
        else:
            raised = weights * jnp.exp(gamma * (losses - jnp.max(losses)))
            new_weights = raised / jnp.sum(raised)
        previous = state.algorithm_state["domain_counts"]
        algorithm_state = {
            "domain_weights": new_weights,
            "domain_counts": jnp.where(seen, counts, previous),
        }
        return state.replace(algorithm_state=algorithm_state), {
            "domain_weights": new_weights,
            "domain_losses": losses,
            "domain_examples": counts.astype(jnp.int32),
            "worst_domain_loss": jnp.max(jnp.where(seen, losses, -jnp.inf)),
        }

    return FederatedAlgorithm(
        name="agnostic_fed_avg",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda w: (
            server_opt.init(w.trainable),
            {"domain_weights": jnp.asarray(initial), "domain_counts": jnp.ones((p,), jnp.float32)},
        ),
        server_update=server_update,
        aggregator=update_aggregator,
    )


@process_builder(agnostic_fed_avg)
def build_agnostic_fed_avg(*args, **kwargs) -> FederatedProcess:
    """Agnostic federated averaging (Mohri et al. 2019, arXiv:1902.00146).

    Returns:
      A `FederatedProcess`. Round metrics: FedAvg's, plus ``domain_weights``
      (``lambda`` after the round), ``domain_losses`` (``L_k`` of the round's
      server model), ``domain_examples`` (arrays [p]) and ``worst_domain_loss``.
      ``state.algorithm_state`` is ``{'domain_weights', 'domain_counts'}``.

    Example:
      >>> process = build_agnostic_fed_avg(model, optax.sgd(0.05), domain_learning_rate=0.5,
      ...                                  batch_size=10)
      >>> out = process.next(process.initialize(0), data.sample_clients(5, seed=0))
      >>> float(out.metrics["domain_weights"].sum())
      1.0
    """
