"""Federated evaluation: the server model's loss and metrics over a cohort.

As TFF's ``build_fed_eval``: every client evaluates the broadcast model on its
data (inference mode, no update), unfinalized metric states are summed over
clients, and the sum is finalized once.
"""

import jax.numpy as jnp

from fedjax_keras.algorithms._client_distribution import (
    PERCENTILES,
    add_host_metric,
    client_percentiles,
)
from fedjax_keras.algorithms._metric_sums import add_batch, empty_sums, finalize_sums
from fedjax_keras.client import ClientOutput, ClientProgram, with_float_mask
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model


def fed_eval(model: Model, *, per_client: bool = False) -> FederatedAlgorithm:
    """Federated evaluation (TFF's ``build_fed_eval``) as a `FederatedAlgorithm`.

    Every client scores the broadcast model on its data (inference mode); the
    unfinalized metric sums are added over clients and finalized once; the
    state's model never changes. Run it with ``epochs=1``, unshuffled.

    Args:
      model: from `from_keras_model`.
      per_client: also report every client's own loss, metrics and example
        count (``clients/loss``, ... arrays [cohort]); `build_fed_eval` adds
        their percentiles (`client_percentiles` as a ``host_metrics`` option).

    Example:
      >>> evaluate = FederatedProcess(model, fed_eval(model), shuffle=False, batch_size=10)
    """
    if not isinstance(per_client, bool):
        raise TypeError(f"per_client must be True or False; received {per_client!r}.")
    require_model(model)

    def start(broadcast, client_state):
        return empty_sums(model)

    def step(sums, batch, key, broadcast, client_state):
        return add_batch(model, sums, broadcast.model, with_float_mask(batch))

    def finish(sums, broadcast, client_state) -> ClientOutput:
        report = ()
        if per_client:
            # A client without examples has no loss or accuracy: NaN, not 0.
            report = {**finalize_sums(model, sums), "num_examples": sums.num_examples}
        weight = sums.num_examples.astype(jnp.float32)
        return ClientOutput.from_training(sums, (), weight, report=report)

    return FederatedAlgorithm(
        name="fed_eval",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: ((), ()),
        server_update=lambda state, aggregate, key: (state, {}),
    )


def build_fed_eval(
    model: Model, *, per_client: bool = False, percentiles=PERCENTILES, **engine_options
) -> FederatedProcess:
    """A process whose ``next(state, cohort)`` evaluates the state's model on the cohort.

    Use ``process.set_model_weights(process.initialize(), weights)`` to evaluate
    trained weights. The state is never changed except for its round counter.

    Args:
      model: from `from_keras_model`.
      per_client: also return every client's own loss, metrics and example
        count as arrays [cohort] in cohort order (metrics ``clients/loss``,
        ``clients/<metric>``, ``clients/num_examples``), for distributions
        and percentiles across clients (TFF gives only the mean).
      percentiles: with ``per_client``, the round metrics also hold
        ``per_client/<name>/mean`` and ``per_client/<name>/p<q>`` for these
        percentiles of the per-client loss and metrics, over the clients with
        examples (`client_percentiles`); ``()`` for the mean alone.
      **engine_options: batch_size, chunk_size, step_buckets, runner (see
        `build_weighted_fed_avg`); data is not shuffled.

    Returns:
      A `FederatedProcess`; its round metrics are ``loss``, the model's metrics,
      ``num_examples`` and ``num_clients`` (plus ``clients/...`` and
      ``per_client/...`` with ``per_client``).
    """
    if not isinstance(per_client, bool):
        raise TypeError(f"per_client must be True or False; received {per_client!r}.")
    options = {"shuffle": False, **engine_options}
    if per_client:
        options = add_host_metric(options, client_percentiles(percentiles=percentiles))
    if options.get("epochs", 1) != 1:
        raise ValueError(
            f"Evaluation reads each example once; epochs must be 1, not {options.get('epochs')}."
        )
    return FederatedProcess(model, fed_eval(model, per_client=per_client), **options)
