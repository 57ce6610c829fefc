"""FedRep and FedPer: a shared body averaged by the server, a personal head per client.

Collins, Hassani, Mokhtari and Shakkottai, "Exploiting Shared Representations
for Personalized Federated Learning", ICML 2021, arXiv:2102.07078 (FedRep);
Arivazhagan, Aggarwal, Singh and Choudhary, "Federated Learning with
Personalization Layers", 2019, arXiv:1912.00818 (FedPer).

The model's trainable weights are split by layer name: the *head* is every
weight whose path is one of ``head_layers`` or starts with ``<layer>/``
(``'dense_1'`` holds ``'dense_1/kernel'`` and ``'dense_1/bias'``); the *body*
is the rest. Each client keeps its head in the state's client table (a client
seen for the first time starts from the initial head); the server keeps and
averages the body only (its own head stays at the initial values and is
never trained: evaluate the personal models, not the server's).

A round, for a client with server body ``phi`` and its head ``h``, one pass
over its batches with the client optimizer:

- FedRep: the first ``head_steps`` batches update the head alone
  (``h <- opt(h, grad_h f(phi, h; b))``, the body frozen); every later batch
  updates the body alone with the new head frozen. The paper runs several
  epochs on the head, then one on the body; with ``epochs=E`` (an engine
  option) a pass is E epochs, so ``head_steps`` of about ``(E - 1) / E`` of a
  client's steps reproduces it. A client with ``head_steps`` steps or fewer
  trains no body: its aggregation weight is the number of examples of its
  body steps, so it adds nothing to the body average.
- FedPer: every batch updates head and body together (FedAvg's local step);
  the weight is the client's example count.

The server averages the body deltas ``phi_k - phi`` (the aggregator, weighted
as above by default) and steps its optimizer on ``-mean``, on the body only.
A head holding every trainable weight (the default head of a one-layer
model) leaves no body: every client trains its own model alone (FedPer's
all-personal limit, local training), with a warning.
"""

import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._tree import tree_where
from fedjax_keras.aggregation import Aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_count
from fedjax_keras.algorithms._metric_sums import MetricSums, add_output, empty_sums
from fedjax_keras.algorithms._schedules import init_for_run, run_hyperparams
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
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import as_optimizer


def split_head(
    trainable: dict, head_layers, *, argument: str = "head_layers"
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(head paths, body paths)`` of the trainable weights, by layer name (or path predicate).

    Args:
      trainable: the model's trainable weights by path.
      head_layers: a layer name, a comma-separated string of them, a sequence
        of them, None / '' for the layer of the last trainable weight (the
        output layer of a Sequential model), or a predicate ``path -> bool``
        choosing weights by path.
      argument: the caller's name for ``head_layers``, for the messages
        (Federated Reconstruction's ``local_layers``).

    Raises:
      ValueError: a name that matches no weight (the message lists the layers),
        or a predicate that chooses none (the message lists the paths).

    Warns:
      UserWarning: the head holds every trainable weight (a one-layer model
        with the default head): each client then trains alone (local training).
    """
    paths = list(trainable)
    layers = list(dict.fromkeys(path.rsplit("/", 1)[0] for path in paths))
    if callable(head_layers):
        head = tuple(p for p in paths if head_layers(p))
        if not head:
            raise ValueError(
                f"{argument} {head_layers!r} chose no trainable weight; the model's weight "
                f"paths are {paths!r}."
            )
        return head, _body_of(head, paths, head_layers, layers, argument)
    if head_layers is None or head_layers == "":
        names = [layers[-1]]
    elif isinstance(head_layers, str):
        names = [name.strip() for name in head_layers.split(",") if name.strip()]
    elif isinstance(head_layers, Sequence):
        names = list(head_layers)
    else:
        raise TypeError(
            f"{argument} must be a layer name, a sequence of them or a predicate on weight "
            f"paths; received {head_layers!r}."
        )
    owns = lambda name, path: path == name or path.startswith(f"{name}/")  # noqa: E731
    unknown = [name for name in names if not any(owns(name, p) for p in paths)]
    if unknown:
        raise ValueError(
            f"{argument} {unknown!r} match no trainable weight; the model's layers with "
            f"trainable weights are {layers!r} (weight paths such as {paths[0]!r})."
        )
    head = tuple(p for p in paths if any(owns(name, p) for name in names))
    return head, _body_of(head, paths, names, layers, argument)


def _body_of(head, paths, chosen, layers, argument) -> tuple[str, ...]:
    """The paths not in ``head``; a warning if there are none."""
    body = tuple(p for p in paths if p not in head)
    if not body:
        # FedPer's limit (every layer personal): legitimate, but rarely what was meant.
        warnings.warn(
            f"{argument} {chosen!r} hold every trainable weight: no body is shared, so every "
            "client trains its own model alone and the server model never changes. Name only "
            f"the personal layers (the model's layers: {layers!r}), or use a deeper model.",
            UserWarning,
            stacklevel=4,
        )
    return body


def _part(tree: dict, paths) -> dict:
    return {path: tree[path] for path in paths}


class RepCarry(NamedTuple):
    """FedRep's local state between steps.

    Attributes:
      weights: `ModelWeights` (body and head).
      head_state, body_state: the client optimizer's states of each part.
      sums: `MetricSums` of the training loss and metrics.
      num_steps: int32, steps with examples so far.
      body_examples: int32, examples of the body steps.
    """

    weights: ModelWeights
    head_state: Any
    body_state: Any
    sums: MetricSums
    num_steps: jax.Array
    body_examples: jax.Array


def _rep_program(model, client_optimizer, head, body, head_steps, weighting):
    template = model.initial_weights.trainable
    head_opt = as_optimizer(client_optimizer, _part(template, head), argument="client_optimizer")
    body_opt = as_optimizer(client_optimizer, _part(template, body), argument="client_optimizer")
    grad_fn = jax.value_and_grad(model.loss_and_output, has_aux=True)

    def start(broadcast, own_head):
        trainable = {**_part(broadcast.model.trainable, body), **own_head}
        zero = jnp.zeros((), jnp.int32)
        return RepCarry(
            ModelWeights(trainable, broadcast.model.non_trainable),
            init_for_run(head_opt, own_head, broadcast),
            init_for_run(body_opt, _part(trainable, body), broadcast),
            empty_sums(model),
            zero,
            zero,
        )

    def step(carry: RepCarry, batch, key, broadcast, own_head) -> RepCarry:
        batch = with_float_mask(batch)
        trainable, non_trainable = carry.weights
        (_, output), grads = grad_fn(trainable, non_trainable, batch, training=True, rng=key)
        has = output.num_examples > 0
        on_head = has & (carry.num_steps < head_steps)
        on_body = has & ~on_head
        new_head, head_state = head_opt.update(
            _part(grads, head), carry.head_state, _part(trainable, head)
        )
        new_body, body_state = body_opt.update(
            _part(grads, body), carry.body_state, _part(trainable, body)
        )
        trainable = {
            **tree_where(on_head, new_head, _part(trainable, head)),
            **tree_where(on_body, new_body, _part(trainable, body)),
        }
        return RepCarry(
            ModelWeights(trainable, tree_where(has, output.non_trainable, non_trainable)),
            tree_where(on_head, head_state, carry.head_state),
            tree_where(on_body, body_state, carry.body_state),
            add_output(model, carry.sums, batch, output),
            carry.num_steps + has.astype(jnp.int32),
            carry.body_examples + jnp.where(on_body, output.num_examples, 0),
        )

    def finish(carry: RepCarry, broadcast, own_head) -> ClientOutput:
        final = carry.weights.trainable
        delta = {p: final[p] - broadcast.model.trainable[p] for p in body}
        weight = client_weight(carry.body_examples, weighting)
        return ClientOutput.from_training(
            carry.sums, delta, weight, client_state=_part(final, head)
        )

    return ClientProgram(start, step, finish)


def _per_program(model, client_optimizer, head, body, weighting):
    opt = as_optimizer(
        client_optimizer, model.initial_weights.trainable, argument="client_optimizer"
    )

    def start(broadcast, own_head):
        trainable = {**_part(broadcast.model.trainable, body), **own_head}
        weights = ModelWeights(trainable, broadcast.model.non_trainable)
        return start_training(model, opt, weights, run_hyperparams(broadcast))

    def finish(carry, broadcast, own_head) -> ClientOutput:
        final = carry.weights.trainable
        delta = {p: final[p] - broadcast.model.trainable[p] for p in body}
        weight = client_weight(carry.num_examples, weighting)
        return ClientOutput.from_training(carry, delta, weight, client_state=_part(final, head))

    return ClientProgram(start, training_step(model, opt), finish)


def _body_algorithm(
    name, model, program, head, body, server_optimizer, aggregator, *, keeps_heads=True
):
    """The server of the head/body algorithms: its optimizer on ``-aggregate`` over the body.

    ``keeps_heads``: each client's head is its row of the client table
    (FedRep, FedPer); False keeps no client table (Federated Reconstruction
    rebuilds the head every round).
    """
    template = model.initial_weights.trainable
    server_opt = server_optimizer_for(server_optimizer, _part(template, body))

    def server_update(state, mean_delta, key):
        del key
        trainable = state.model.trainable
        pseudo_gradient = jax.tree.map(jnp.negative, mean_delta)
        new_body, optimizer_state = server_opt.update(
            pseudo_gradient, state.optimizer_state, _part(trainable, body)
        )
        weights = ModelWeights({**trainable, **new_body}, state.model.non_trainable)
        return state.replace(model=weights, optimizer_state=optimizer_state), {}

    return FederatedAlgorithm(
        name=name,
        client_program=program,
        server_init=lambda weights: (server_opt.init(_part(weights.trainable, body)), ()),
        server_update=server_update,
        aggregator=aggregator_or_default(aggregator),
        client_state_init=(lambda weights: _part(weights.trainable, head)) if keeps_heads else None,
    )


def fed_rep(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    head_layers=None,
    head_steps: int = 2,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """FedRep (Collins et al. 2021, arXiv:2102.07078) as a `FederatedAlgorithm`.

    Each client's head is its row of the client table (sized by the engine
    option ``population_size``); its first ``head_steps`` local steps train
    the head, the rest the body, which the server averages.

    Args:
      model: from `from_keras_model`.
      client_optimizer: the local optimizer (each part keeps its own state).
      server_optimizer: applied to ``-aggregate(body delta)``; default ``optax.sgd(1.0)``.
      head_layers: the personal layers by name; None: the layer of the last trainable weight.
      head_steps: local steps that train the head before the body.
      weighting: `ClientWeighting` (or its value): examples of the body steps, or 1.
      aggregator: combines the body deltas (default: the weighted mean).

    Example:
      >>> process = FederatedProcess(model, fed_rep(model, optax.sgd(0.05), head_steps=2))
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    head_steps = check_count(head_steps, "head_steps", minimum=0)
    head, body = split_head(model.initial_weights.trainable, head_layers)
    program = _rep_program(model, client_optimizer, head, body, head_steps, weighting)
    return _body_algorithm("fed_rep", model, program, head, body, server_optimizer, aggregator)


def fed_per(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    head_layers=None,
    weighting: ClientWeighting | str = ClientWeighting.NUM_EXAMPLES,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """FedPer (Arivazhagan et al. 2019, arXiv:1912.00818) as a `FederatedAlgorithm`.

    As `fed_rep` without ``head_steps``: every local step trains head and
    body together; only the body is sent and averaged.
    """
    require_model(model)
    weighting = as_client_weighting(weighting)
    head, body = split_head(model.initial_weights.trainable, head_layers)
    program = _per_program(model, client_optimizer, head, body, weighting)
    return _body_algorithm("fed_per", model, program, head, body, server_optimizer, aggregator)


@process_builder(fed_rep, shown_engine_options=("population_size",))
def build_fed_rep(*args, **kwargs) -> FederatedProcess:
    """FedRep (Collins et al. 2021, arXiv:2102.07078): head steps first, then body steps.

    Args:
      model: from `from_keras_model`.
      client_optimizer: the local optimizer (each part keeps its own state).
      server_optimizer: applied to ``-aggregate(body delta)``; default ``optax.sgd(1.0)``.
      head_layers: the personal layers by name (``('dense_1',)``, or
        ``'dense_1,dense_2'``); None: the layer of the last trainable weight.
      head_steps: local steps (batches with examples) that train the head
        before the remaining steps train the body; keep it below the clients'
        step counts (examples / batch_size x epochs), or no body is trained.
      weighting: 'num_examples' (examples of the body steps) or 'uniform'
        (1 for a client with body steps).
      aggregator: combines the body deltas (default: the weighted mean).
      population_size: rows of the client table (None: the first cohort's).
      **engine_options: see `build_weighted_fed_avg`.

    Returns:
      A `FederatedProcess`; the client table's rows are the heads (trainable
      weights by path); the round metrics are the personalized models'
      training loss and metrics.

    Example:
      >>> process = build_fed_rep(model, optax.sgd(0.05), head_layers=("dense_1",),
      ...                         head_steps=2, batch_size=10)
      >>> out = process.next(process.initialize(0), data.sample_clients(5, seed=0))
    """


@process_builder(fed_per, shown_engine_options=("population_size",))
def build_fed_per(*args, **kwargs) -> FederatedProcess:
    """FedPer (Arivazhagan et al. 2019, arXiv:1912.00818): joint local steps, body averaged.

    Same arguments as `build_fed_rep` but ``head_steps``: every local step
    trains head and body together; only the body is sent and averaged.
    """
