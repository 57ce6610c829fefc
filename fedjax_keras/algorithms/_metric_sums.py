"""Sum-then-finalize metrics of a second model: personal models, before/after fine-tuning.

The engine's round metrics (``loss``, the model's metrics) describe the model
each algorithm trains for the server. Personalization algorithms also report
other models (Ditto's personal model, APFL's mixed model, a fine-tuned model),
with the same TFF semantics: every client sums unfinalized metric states, the
sums travel to the server as part of the client's update (aggregated with
`fedjax_keras.aggregation.sum`) and are finalized once there.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras.aggregation import by_key
from fedjax_keras.aggregation import sum as sum_aggregator
from fedjax_keras.algorithms._server_step import init_server_optimizer, step_and_report
from fedjax_keras.engine import FederatedAlgorithm
from fedjax_keras.models import BatchOutput, Model, ModelWeights


class MetricSums(NamedTuple):
    """Unfinalized metrics of one model over some examples.

    Attributes:
      metrics: the model's unfinalized metric state (`Model.init_metrics`).
      loss_sum: float32 scalar, sum of ``loss * examples`` over batches.
      num_examples: int32 scalar, examples counted.
    """

    metrics: dict
    loss_sum: jax.Array
    num_examples: jax.Array


def empty_sums(model: Model) -> MetricSums:
    """Sums over no example."""
    return MetricSums(model.init_metrics(), jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))


def add_output(model: Model, sums: MetricSums, batch, output: BatchOutput) -> MetricSums:
    """``sums`` plus one batch whose forward pass gave ``output`` (padding excluded)."""
    count = output.num_examples
    return MetricSums(
        model.update_metrics(sums.metrics, batch, output.predictions, output.output_masks),
        sums.loss_sum + jnp.where(count > 0, output.loss * count.astype(jnp.float32), 0.0),
        sums.num_examples + count,
    )


def add_batch(model: Model, sums: MetricSums, weights: ModelWeights, batch) -> MetricSums:
    """``sums`` plus ``weights``' inference-mode loss and metrics on ``batch`` (float mask)."""
    output = model.forward_pass(weights, batch, training=False)
    return add_output(model, sums, batch, output)


def finalize_sums(model: Model, sums: MetricSums, prefix: str = "") -> dict:
    """``{prefix + 'loss': mean loss, prefix + <metric>: value}``; NaN when nothing was counted.

    Works on one client's sums and on sums over clients alike.
    """
    has = sums.num_examples > 0
    values = dict(model.finalize_metrics(sums.metrics))
    values["loss"] = sums.loss_sum / jnp.maximum(sums.num_examples, 1).astype(jnp.float32)
    return {prefix + name: jnp.where(has, value, jnp.nan) for name, value in values.items()}


def with_personal_models(
    name, model, program, server_optimizer, delta_aggregator, client_state_init
):
    """A `FederatedAlgorithm` whose server is FedAvg's and whose clients also train personal models.

    Ditto's and APFL's shape: every client sends ``{'delta': its global
    delta, 'personal': the MetricSums of its personal model}``; the server
    steps its optimizer on the aggregated delta and reports the summed
    personal metrics as ``personal/<name>``; each client's personal model is
    its row of the client table (``client_state_init(weights)`` for a client
    never seen).
    """

    def personal_metrics(aggregate):
        return finalize_sums(model, aggregate["personal"], "personal/")

    return FederatedAlgorithm(
        name=name,
        client_program=program,
        server_init=init_server_optimizer(server_optimizer),
        server_update=step_and_report(server_optimizer, personal_metrics),
        aggregator=by_key({"delta": delta_aggregator, "personal": sum_aggregator()}),
        client_state_init=client_state_init,
    )
