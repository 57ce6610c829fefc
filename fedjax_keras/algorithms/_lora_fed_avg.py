"""Federated LoRA fine-tuning: FedAvg over the LoRA factors of a Keras model.

Clients train and send only the trainable weights, which `enable_lora` makes
the low-rank factors (and the adapted layers' biases); the frozen base model
is broadcast with the server state and never aggregated. The round metric
``upload/bits_per_client`` is what one client sends.
"""

from fedjax_keras.aggregation import Aggregator, check_aggregator, mean, upload_size
from fedjax_keras.algorithms._fed_avg import build_weighted_fed_avg
from fedjax_keras.engine import FederatedProcess
from fedjax_keras.models import enable_lora, from_keras_model


def build_lora_fed_avg(
    keras_model,
    dummy_batch,
    loss,
    *,
    rank: int,
    client_optimizer,
    server_optimizer=None,
    alpha: float | None = None,
    layer_names=None,
    metrics=None,
    aggregator: Aggregator | None = None,
    client_learning_rate_schedule=None,
    **engine_options,
) -> FederatedProcess:
    """LoRA on ``keras_model`` (in place), wrapped, and FedAvg over the factors.

    Args:
      keras_model: a built, uncompiled Keras model: a keras_hub task or
        backbone (LoRA where its ``enable_lora`` puts it: attention query and
        value) or any model (its Dense, EinsumDense and Embedding layers).
      dummy_batch: one batch ``(x, y)``, as for `from_keras_model`.
      loss: as for `from_keras_model`.
      rank: the LoRA rank.
      client_optimizer, server_optimizer, client_learning_rate_schedule: as
        for `build_weighted_fed_avg` (the server's default ``optax.sgd(1.0)``).
      alpha: LoRA's scale numerator; default ``rank``.
      layer_names: the layers to adapt (``layer.name``); see `enable_lora`.
      metrics: as for `from_keras_model`.
      aggregator: combines the clients' factor updates (default ``mean()``);
        wrapped in `upload_size` for the ``upload/bits_per_client`` metric.
      **engine_options: see `fedjax_keras.algorithms.EngineOptions`
        (``batch_size``, ``epochs``, ``runner``, ...).

    Returns:
      The `FederatedProcess`; ``process.model.to_keras(weights,
      merge_lora=True)`` gives the fine-tuned Keras model with the factors
      merged into its kernels.

    Example:
      >>> process = build_lora_fed_avg(gpt2_lm, (x, y), loss, rank=4,
      ...     client_optimizer=optax.adam(1e-3), batch_size=8)
    """
    enable_lora(keras_model, rank, alpha=alpha, layer_names=layer_names)
    model = from_keras_model(keras_model, dummy_batch, loss, metrics=metrics)
    inner = mean() if aggregator is None else check_aggregator(aggregator, "aggregator")
    return build_weighted_fed_avg(
        model,
        client_optimizer=client_optimizer,
        server_optimizer=server_optimizer,
        aggregator=upload_size(inner),
        client_learning_rate_schedule=client_learning_rate_schedule,
        **engine_options,
    )
