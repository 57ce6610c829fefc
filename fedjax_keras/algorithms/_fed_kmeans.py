"""Federated k-means on the clients' inputs (TFF's ``build_fed_kmeans``).

The server holds ``k`` centroids ``c_j`` and their weights ``w_j`` (the
number of points each has absorbed, starting at 1). In a round every client
assigns each of its points ``x`` (the inputs, flattened) to its nearest
centroid under the squared Euclidean distance and sends, per centroid, the
sum of its points ``s_j`` and their count ``n_j``; the sums are added over
clients (``aggregator``, default `fedjax_keras.aggregation.sum`) and the
server moves each centroid to the weighted mean of its old position and the
new points, as TFF does (a mini-batch k-means step):

    c_j <- (w_j c_j + s_j) / (w_j + n_j),      w_j <- w_j + n_j.

A centroid no point chose stays where it is. The round's ``loss`` is the
k-means cost of the round's centroids: the mean squared distance of the
cohort's points to their nearest centroid. The centroids are the state's
model (``state.model.trainable['centroids/centroids']``, [k, *data_shape]),
the weights ``state.algorithm_state``; the labels of the data are ignored.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_keras.aggregation import Aggregator
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._checks import aggregator_or_default, check_count
from fedjax_keras.client import ClientOutput, ClientProgram
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess
from fedjax_keras.models import CENTROIDS_PATH, Model, ModelWeights, centroid_model


def kmeans_model(
    num_clusters: int, data_shape: Sequence[int], *, random_seed: int = 0, initial_centroids=None
) -> Model:
    """The `Model` whose only weight is ``k`` centroids [k, *data_shape], for `fed_kmeans`.

    Args:
      num_clusters: ``k``.
      data_shape: the shape of one input (``data.examples['x'].shape[1:]``).
      random_seed: the initial centroids are ``N(0, 1)`` draws from it (TFF's).
      initial_centroids: float [k, *data_shape] instead (e.g. k of the points).
    """
    k = check_count(num_clusters, "num_clusters")
    shape = tuple(int(d) for d in data_shape)
    if initial_centroids is None:
        initial = np.asarray(jax.random.normal(jax.random.PRNGKey(random_seed), (k, *shape)))
    else:
        initial = np.asarray(initial_centroids, np.float32)
        if initial.shape != (k, *shape):
            raise ValueError(
                f"initial_centroids must have shape (num_clusters, *data_shape) = {(k, *shape)}; "
                f"received {initial.shape}."
            )
    return centroid_model(initial)


def fed_kmeans(model: Model, *, aggregator: Aggregator | None = None) -> FederatedAlgorithm:
    """Federated k-means (TFF's ``build_fed_kmeans``) as a `FederatedAlgorithm`.

    ``c_j <- (w_j c_j + s_j) / (w_j + n_j)`` (module docstring).

    Args:
      model: from `kmeans_model` (its weight is the centroids).
      aggregator: adds the clients' ``{'sums', 'counts'}`` (default: the sum).

    Raises:
      TypeError: a model that is not a `kmeans_model`.

    Example:
      >>> model = kmeans_model(3, data.examples["x"].shape[1:])
      >>> process = FederatedProcess(model, fed_kmeans(model), batch_size=50)
    """
    centroids = getattr(model, "initial_weights", None)
    centroids = None if centroids is None else centroids.trainable.get(CENTROIDS_PATH)
    if not isinstance(model, Model) or centroids is None:
        raise TypeError(
            "fed_kmeans runs on the centroids model: pass "
            "kmeans_model(num_clusters, data_shape); received "
            f"{type(model).__name__}."
        )
    k, *shape = centroids.shape
    point_sums = aggregator_or_default(aggregator, default=sum_aggregator)

    def start(broadcast, client_state):
        zero = jnp.zeros((), jnp.float32)
        return jnp.zeros((k, *shape), jnp.float32), jnp.zeros((k,), jnp.float32), zero

    def step(carry, batch, key, broadcast, client_state):
        sums, counts, cost = carry
        mask = jnp.asarray(batch["mask"], bool)
        x = jnp.asarray(batch["x"], jnp.float32)
        distances = -model.apply(broadcast.model, x)  # [batch, k]
        nearest = jax.nn.one_hot(jnp.argmin(distances, axis=1), k) * mask[:, None]
        flat = jnp.where(mask[:, None], x.reshape(len(x), -1), 0.0)
        return (
            sums + (nearest.T @ flat).reshape(sums.shape),
            counts + jnp.sum(nearest, axis=0),
            cost + jnp.sum(jnp.where(mask, jnp.min(distances, axis=1), 0.0)),
        )

    def finish(carry, broadcast, client_state) -> ClientOutput:
        sums, counts, cost = carry
        num_examples = jnp.sum(counts).astype(jnp.int32)
        return ClientOutput(
            update={"sums": sums, "counts": counts},
            weight=num_examples.astype(jnp.float32),
            metrics=model.init_metrics(),
            loss_sum=cost,
            num_examples=num_examples,
        )

    def server_update(state, aggregate, key):
        del key
        centroids = state.model.trainable[CENTROIDS_PATH]
        weights = state.algorithm_state
        counts = aggregate["counts"]
        total = weights + counts
        scale = lambda v: v.reshape((k,) + (1,) * len(shape))  # noqa: E731
        moved = (scale(weights) * centroids + aggregate["sums"]) / scale(total)
        new = ModelWeights({CENTROIDS_PATH: moved}, state.model.non_trainable)
        return state.replace(model=new, algorithm_state=total), {
            "cluster_counts": counts.astype(jnp.int32)
        }

    return FederatedAlgorithm(
        name="fed_kmeans",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: ((), jnp.ones((k,), jnp.float32)),
        server_update=server_update,
        aggregator=point_sums,
    )


def build_fed_kmeans(
    num_clusters: int,
    data_shape: Sequence[int],
    *,
    random_seed: int = 0,
    initial_centroids=None,
    aggregator: Aggregator | None = None,
    **engine_options,
) -> FederatedProcess:
    """Federated k-means (TFF's ``build_fed_kmeans``): centroids as the server state.

    Args:
      num_clusters: ``k``.
      data_shape: the shape of one input (``data.examples['x'].shape[1:]``);
        inputs are flattened for the distances.
      random_seed: the initial centroids are ``N(0, 1)`` draws from it (TFF's).
      initial_centroids: float [k, *data_shape] instead (e.g. k of the points).
      aggregator: adds the clients' ``{'sums', 'counts'}`` (default: the sum).
      **engine_options: batch_size, chunk_size, runner, ... (see
        `build_weighted_fed_avg`; ``epochs`` > 1 counts every point that many times).

    Returns:
      A `FederatedProcess`; ``process.model`` is the k-means model (its
      ``apply`` gives ``-squared distances`` [batch, k]). Round metrics:
      ``loss`` (the k-means cost), ``num_examples``, ``cluster_counts`` ([k],
      the round's points per centroid).

    Example:
      >>> process = build_fed_kmeans(3, data.examples["x"].shape[1:], batch_size=50)
      >>> state = process.initialize()
      >>> state = process.next(state, data.sample_clients(10, seed=0)).state
      >>> state.model.trainable["centroids/centroids"].shape[0]
      3
    """
    model = kmeans_model(
        num_clusters, data_shape, random_seed=random_seed, initial_centroids=initial_centroids
    )
    return FederatedProcess(model, fed_kmeans(model, aggregator=aggregator), **engine_options)
