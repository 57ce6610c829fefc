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
from fedjax_keras.client import ClientOutput, ClientProgram
from fedjax_keras.engine import FederatedAlgorithm, FederatedProcess, require_model
from fedjax_keras.models import Model


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
    require_model(model)
    options = {"shuffle": False, **engine_options}
    if per_client:
        options = add_host_metric(options, client_percentiles(percentiles=percentiles))
    if options.get("epochs", 1) != 1:
        raise ValueError(
            f"Evaluation reads each example once; epochs must be 1, not {options.get('epochs')}."
        )

    def start(broadcast, client_state):
        return (model.init_metrics(), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))

    def step(carry, batch, key, broadcast, client_state):
        metrics, loss_sum, num_examples = carry
        batch = {**batch, "mask": jnp.asarray(batch["mask"], jnp.float32)}
        output = model.forward_pass(broadcast.model, batch, training=False)
        count = output.num_examples.astype(jnp.float32)
        return (
            model.update_metrics(metrics, batch, output.predictions, output.output_masks),
            loss_sum + jnp.where(count > 0, output.loss * count, 0.0),
            num_examples + output.num_examples,
        )

    def finish(carry, broadcast, client_state) -> ClientOutput:
        metrics, loss_sum, num_examples = carry
        report = ()
        if per_client:
            # A client without examples has no loss or accuracy: NaN, not 0.
            has = num_examples > 0
            finalized = model.finalize_metrics(metrics)
            report = {name: jnp.where(has, value, jnp.nan) for name, value in finalized.items()}
            report["loss"] = jnp.where(has, loss_sum / jnp.maximum(num_examples, 1), jnp.nan)
            report["num_examples"] = num_examples
        return ClientOutput(
            update=(),
            weight=num_examples.astype(jnp.float32),
            metrics=metrics,
            loss_sum=loss_sum,
            num_examples=num_examples,
            report=report,
        )

    algorithm = FederatedAlgorithm(
        name="fed_eval",
        client_program=ClientProgram(start, step, finish),
        server_init=lambda weights: ((), ()),
        server_update=lambda state, aggregate, key: (state, {}),
    )
    return FederatedProcess(model, algorithm, **options)
