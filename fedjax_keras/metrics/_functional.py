"""Functional, mergeable metrics: pure init / update / merge / finalize.

Federated metrics follow TFF's sum-then-finalize rule: every client keeps an
unfinalized state (sums and counts), states are merged by summing, and only the
merged state is finalized. Accuracy over two clients merged therefore equals
accuracy over their union, not the mean of the two accuracies.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

State = Any


class FunctionalMetric(NamedTuple):
    """One metric as four pure functions over its state pytree.

    Attributes:
      name: the metric's name in finalized results.
      init: ``() -> state``, the empty state.
      update: ``(state, y_true, y_pred, mask) -> state`` for one batch; ``mask``
        is float32 [batch] (0 for padding).
      merge: ``(state, state) -> state``, combining two clients' states.
      finalize: ``(state) -> value``.
    """

    name: str
    init: Callable[[], State]
    update: Callable[[State, Any, Any, Any], State]
    merge: Callable[[State, State], State]
    finalize: Callable[[State], Any]


def merge_by_sum(a: State, b: State) -> State:
    """Merges two unfinalized states by summing them leaf by leaf."""
    return jax.tree.map(jnp.add, a, b)


class MetricSuite(NamedTuple):
    """Several metrics over per-output predictions, with one dict state.

    Attributes:
      metrics: tuple of (output index, FunctionalMetric).
    """

    metrics: tuple

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(metric.name for _, metric in self.metrics)

    def init(self) -> dict:
        """The empty state: a dict from metric name to its state."""
        return {metric.name: metric.init() for _, metric in self.metrics}

    def update(self, state: dict, labels: list, predictions: list, mask, output_masks=None):
        """Updates every metric with one batch.

        Args:
          state: from `init` or a previous `update`.
          labels: per-output labels, each [batch, ...].
          predictions: per-output predictions, each [batch, ...].
          mask: float32 [batch].
          output_masks: optional per-output element masks [batch, ...] (Keras
            masks), combined with ``mask`` as the metrics' sample weights.
        """
        weights = []
        for i in range(len(predictions)):
            keras_mask = None if output_masks is None else output_masks[i]
            if keras_mask is None:
                weights.append(mask)
            else:
                keras_mask = jnp.asarray(keras_mask, jnp.float32)
                shaped = mask.reshape(mask.shape + (1,) * (keras_mask.ndim - 1))
                weights.append(shaped * keras_mask)
        return {
            metric.name: metric.update(state[metric.name], labels[i], predictions[i], weights[i])
            for i, metric in self.metrics
        }

    def merge(self, a: dict, b: dict) -> dict:
        return {
            metric.name: metric.merge(a[metric.name], b[metric.name]) for _, metric in self.metrics
        }

    def finalize(self, state: dict) -> dict:
        return {metric.name: metric.finalize(state[metric.name]) for _, metric in self.metrics}
