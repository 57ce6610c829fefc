"""HypCluster: k models; each client trains, and helps average, the one that fits it best.

Mansour, Mohri, Ro and Suresh, "Three Approaches for Personalization with
Applications to Federated Learning", 2020, arXiv:2002.10619 (Section 3,
hypothesis-based clustering); FedJAX's ``hyp_cluster`` follows it with a
separate evaluation pass over each client's data before training.

Here a client makes one pass over its batches, so the choice and the training
share it. The server holds ``k`` models ``w_1..w_k`` (trainable weights; the
non-trainable ones are shared). In a round, client ``i``:

1. on its first batch with examples ``b_1``, evaluates every model
   (inference mode) and picks ``c_i = argmin_j f_i(w_j; b_1)`` (ties: the
   lowest index); with shuffling on, ``b_1`` is a fresh random batch each round;
2. trains ``w_{c_i}`` on all its batches, ``b_1`` included, with the client
   optimizer, as in FedAvg, ending at ``w'_i``.

The server averages the deltas per cluster, ``d_j = sum_{c_i = j} n_i (w'_i -
w_j) / sum_{c_i = j} n_i``, and steps cluster ``j``'s own server optimizer on
``-d_j``; a cluster no client chose is left unchanged. With ``k = 1`` it is
FedAvg. The aggregator sees each client's delta in its cluster's row of a
``[k, ...]`` stack (zeros elsewhere, weight ``n_i``); the server divides row
``j`` by cluster ``j``'s share of the weight, which turns the default mean
into the per-cluster means above (another aggregator acts on the rows alike).

Cost: every step evaluates the ``k`` models (a vmapped executor computes what
a branch would skip), and a client's update is ``k`` times a model's size.

State: ``state.model`` is cluster 0 (so `set_model_weights` sets it and tools
reading the server model see a real model), ``state.algorithm_state`` the
trainable weights of clusters 1..k-1 stacked ``[k - 1, ...]``, and
``state.optimizer_state`` the k server optimizer states stacked ``[k, ...]``;
`hyp_cluster_models` lists the k models. Clients receive the default
broadcast (cluster 0 and the others), so they see every cluster.
"""

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras._tree import tree_where
from fedjax_keras.aggregation import Aggregator, by_key
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._builder import process_builder
from fedjax_keras.algorithms._checks import aggregator_or_default, check_count, check_number
from fedjax_keras.algorithms._schedules import run_hyperparams
from fedjax_keras.algorithms._server_step import server_optimizer_for
from fedjax_keras.client import (
    ClientOutput,
    ClientProgram,
    TrainCarry,
    start_training,
    training_step,
    with_float_mask,
)
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model, ModelWeights
from fedjax_keras.optimizers import as_optimizer


def stack_clusters(state) -> dict:
    """The k clusters' trainable weights, leaves [k, ...], from a HypCluster state."""
    return jax.tree.map(
        lambda first, rest: jnp.concatenate([first[None], rest]),
        state.model.trainable,
        state.algorithm_state,
    )


def hyp_cluster_models(state) -> list[ModelWeights]:
    """The k cluster models of a `build_hyp_cluster` state, cluster 0 first."""
    stacked = stack_clusters(state)
    k = len(jax.tree.leaves(stacked)[0])
    return [
        ModelWeights(jax.tree.map(lambda leaf, j=j: leaf[j], stacked), state.model.non_trainable)
        for j in range(k)
    ]


def _initial_clusters(weights, num_clusters, initial_clusters, init_noise, cluster_seed):
    """Trainable weights [k, ...]: the given ones, or the initial weights plus noise."""
    trainable = weights.trainable
    if initial_clusters is None:
        key = jax.random.PRNGKey(cluster_seed)

        def perturbed(j):
            leaves, treedef = jax.tree.flatten(trainable)
            keys = jax.random.split(jax.random.fold_in(key, j), len(leaves))
            noisy = [
                leaf + init_noise * jax.random.normal(k, leaf.shape, leaf.dtype)
                for leaf, k in zip(leaves, keys)
            ]
            return jax.tree.unflatten(treedef, noisy)

        rows = [trainable] + [perturbed(j) for j in range(1, num_clusters)]
    else:
        rows = [getattr(c, "trainable", c) for c in initial_clusters]
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *rows)


def _check_initial_clusters(initial_clusters, num_clusters, template):
    if initial_clusters is None:
        return
    if not isinstance(initial_clusters, Sequence) or len(initial_clusters) != num_clusters:
        raise ValueError(
            f"initial_clusters must be a list of num_clusters={num_clusters} ModelWeights (or "
            f"trainable dicts); received {type(initial_clusters).__name__} of length "
            f"{len(initial_clusters) if isinstance(initial_clusters, Sequence) else '?'}."
        )
    expected = jax.tree.map(np.shape, template)
    for j, cluster in enumerate(initial_clusters):
        got = jax.tree.map(np.shape, getattr(cluster, "trainable", cluster))
        if got != expected:
            raise ValueError(
                f"initial_clusters[{j}] does not fit the model: expected trainable weights "
                f"{expected}, received {got}. Use model.initial_weights of models of the same "
                "architecture."
            )


class HypCarry(NamedTuple):
    """A client's local state.

    Attributes:
      train: the `TrainCarry` of the chosen cluster's training.
      cluster: int32, the chosen cluster (0 until chosen).
      chosen: bool, whether a batch with examples was seen.
      losses: float32 [k], every cluster's loss on the first batch (NaN before).
    """

    train: TrainCarry
    cluster: jax.Array
    chosen: jax.Array
    losses: jax.Array


def hyp_cluster(
    model: Model,
    client_optimizer,
    server_optimizer=None,
    *,
    num_clusters: int = 2,
    initial_clusters: Sequence[Any] | None = None,
    init_noise: float = 0.1,
    cluster_seed: int = 0,
    aggregator: Aggregator | None = None,
) -> FederatedAlgorithm:
    """HypCluster (Mansour et al. 2020, arXiv:2002.10619) as a `FederatedAlgorithm`, one pass.

    ``k`` models; each client trains the one of lowest loss on its first
    batch; the server averages the deltas per cluster (module docstring).

    Args:
      model: from `from_keras_model`.
      client_optimizer: the local optimizer.
      server_optimizer: each cluster's, applied to ``-d_j``; default ``optax.sgd(1.0)``.
      num_clusters: ``k >= 1``.
      initial_clusters: k `ModelWeights` (or trainable dicts) to start from,
        e.g. the ``initial_weights`` of differently seeded models; by default
        cluster 0 is the model's initial weights and cluster ``j`` those plus
        Gaussian noise of standard deviation ``init_noise`` (fixed keys from
        ``cluster_seed``; identical clusters would never separate).
      init_noise: see ``initial_clusters``.
      cluster_seed: see ``initial_clusters``.
      aggregator: combines the ``[k, ...]`` stacked deltas (default: the mean
        weighted by example counts; see the module docstring).

    Example:
      >>> process = FederatedProcess(model, hyp_cluster(model, optax.sgd(0.05), num_clusters=3))
    """
    require_model(model)
    k = check_count(num_clusters, "num_clusters")
    init_noise = check_number(init_noise, "init_noise", minimum=0.0)
    template = model.initial_weights.trainable
    _check_initial_clusters(initial_clusters, k, template)
    delta_aggregator = aggregator_or_default(aggregator)
    client_opt = as_optimizer(client_optimizer, template, argument="client_optimizer")
    server_opt = server_optimizer_for(server_optimizer, template)
    train_step = training_step(model, client_opt)

    def cluster_losses(stacked, non_trainable, batch):
        loss = lambda t: model.loss(ModelWeights(t, non_trainable), batch, training=False)  # noqa: E731
        return jax.vmap(loss)(stacked)

    def start(broadcast, client_state) -> HypCarry:
        first = ModelWeights(broadcast.model.trainable, broadcast.model.non_trainable)
        return HypCarry(
            start_training(model, client_opt, first, run_hyperparams(broadcast)),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), bool),
            jnp.full((k,), jnp.nan, jnp.float32),
        )

    def step(carry: HypCarry, batch, key, broadcast, client_state) -> HypCarry:
        batch = with_float_mask(batch)
        stacked = stack_clusters(broadcast)
        non_trainable = broadcast.model.non_trainable
        choose = (jnp.sum(batch["mask"]) > 0) & ~carry.chosen
        losses = cluster_losses(stacked, non_trainable, batch)
        cluster = jnp.where(choose, jnp.argmin(losses).astype(jnp.int32), carry.cluster)
        picked = ModelWeights(jax.tree.map(lambda s: s[cluster], stacked), non_trainable)
        restart = start_training(model, client_opt, picked, run_hyperparams(broadcast))
        train = tree_where(choose, restart, carry.train)
        return HypCarry(
            train_step(train, batch, key, broadcast, client_state),
            cluster,
            carry.chosen | choose,
            jnp.where(choose, losses, carry.losses),
        )

    def finish(carry: HypCarry, broadcast, client_state) -> ClientOutput:
        train = carry.train
        start_weights = jax.tree.map(lambda s: s[carry.cluster], stack_clusters(broadcast))
        delta = jax.tree.map(jnp.subtract, train.weights.trainable, start_weights)
        one_hot = jnp.arange(k) == carry.cluster
        rows = jax.tree.map(
            lambda d: jnp.where(one_hot.reshape((k,) + (1,) * d.ndim), d[None], 0.0), delta
        )
        weight = train.num_examples.astype(jnp.float32)
        counts = {
            "weights": jnp.where(one_hot, weight, 0.0),
            "clients": one_hot.astype(jnp.float32),
        }
        return ClientOutput.from_training(
            train,
            {"delta": rows, "counts": counts},
            weight,
            report={"cluster": carry.cluster, "cluster_losses": carry.losses},
        )

    def server_update(state, aggregate, key):
        del key
        weights = aggregate["counts"]["weights"]
        share = jnp.where(weights > 0, jnp.sum(weights) / jnp.where(weights > 0, weights, 1.0), 0.0)
        means = jax.tree.map(
            lambda d: d * share.reshape((k,) + (1,) * (d.ndim - 1)), aggregate["delta"]
        )
        stacked = stack_clusters(state)

        def one(params, mean_delta, opt_state):
            pseudo_gradient = jax.tree.map(jnp.negative, mean_delta)
            return server_opt.update(pseudo_gradient, opt_state, params)

        new_params, new_opt = jax.vmap(one)(stacked, means, state.optimizer_state)
        moved = weights > 0

        def keep_unchosen(new, old):
            return jnp.where(moved.reshape((k,) + (1,) * (new.ndim - 1)), new, old)

        new_params = jax.tree.map(keep_unchosen, new_params, stacked)
        new_opt = jax.tree.map(keep_unchosen, new_opt, state.optimizer_state)
        state = state.replace(
            model=ModelWeights(jax.tree.map(lambda s: s[0], new_params), state.model.non_trainable),
            optimizer_state=new_opt,
            algorithm_state=jax.tree.map(lambda s: s[1:], new_params),
        )
        return state, {
            "cluster_clients": aggregate["counts"]["clients"].astype(jnp.int32),
            "cluster_examples": weights.astype(jnp.int32),
        }

    def server_init(weights):
        clusters = _initial_clusters(weights, k, initial_clusters, init_noise, cluster_seed)
        optimizer_state = jax.vmap(server_opt.init)(clusters)
        return optimizer_state, jax.tree.map(lambda s: s[1:], clusters)

    return FederatedAlgorithm(
        name="hyp_cluster",
        client_program=ClientProgram(start, step, finish),
        server_init=server_init,
        server_update=server_update,
        aggregator=by_key({"delta": delta_aggregator, "counts": sum_aggregator()}),
    )


@process_builder(hyp_cluster)
def build_hyp_cluster(*args, **kwargs) -> FederatedProcess:
    """HypCluster (Mansour et al. 2020, arXiv:2002.10619), one pass per client.

    Returns:
      A `FederatedProcess`. Round metrics: FedAvg's, plus ``cluster_clients``
      and ``cluster_examples`` (arrays [k]); per client ``clients/cluster``
      and ``clients/cluster_losses`` ([cohort, k], the first batch's losses).

    Example:
      >>> process = build_hyp_cluster(model, optax.sgd(0.05), num_clusters=3, batch_size=10)
      >>> out = process.next(process.initialize(0), data.sample_clients(10, seed=0))
      >>> out.metrics["cluster_clients"].shape
      (3,)
    """
