"""Keras 3 metric objects as `FunctionalMetric`s.

Keras metrics are stateful objects, but every built-in one keeps its state in
Keras variables and offers `stateless_update_state` / `stateless_result`; we use
those on a private copy of the metric, so the user's object is never touched.
"""

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import keras
import numpy as np

from fedjax_keras import errors
from fedjax_keras.metrics import FunctionalMetric, MetricSuite, merge_by_sum


def _accuracy_for(name: str, y_true_example, y_pred_example) -> keras.metrics.Metric:
    """Keras ``compile``'s reading of ``'accuracy'``: binary, sparse or categorical by shapes."""
    true_shape, pred_shape = np.shape(y_true_example), np.shape(y_pred_example)
    if pred_shape[-1:] == (1,):
        return keras.metrics.BinaryAccuracy(name=name)
    if len(true_shape) < len(pred_shape) or (true_shape[-1:] == (1,) and pred_shape[-1:] != (1,)):
        return keras.metrics.SparseCategoricalAccuracy(name=name)
    return keras.metrics.CategoricalAccuracy(name=name)


def _as_keras_metric(metric: Any, y_true_example, y_pred_example) -> keras.metrics.Metric:
    if isinstance(metric, keras.metrics.Metric):
        return metric
    if isinstance(metric, str) and metric.lower() in ("accuracy", "acc"):
        # keras.metrics.get('accuracy') is exact equality of labels and
        # predictions, which fails on logits; compile() picks by shapes instead.
        return _accuracy_for(metric, y_true_example, y_pred_example)
    if isinstance(metric, str):
        try:
            resolved = keras.metrics.get(metric)
        except ValueError as e:
            raise errors.MetricNotFunctionalError(f"Keras knows no metric named {metric!r}.") from e
        if isinstance(resolved, keras.metrics.Metric):
            return resolved
        if isinstance(resolved, type) and issubclass(resolved, keras.metrics.Metric):
            return resolved()
        return keras.metrics.MeanMetricWrapper(resolved, name=metric)
    if isinstance(metric, type) and issubclass(metric, keras.metrics.Metric):
        return metric()
    if callable(metric):
        # TFF's newer convention: a zero-argument constructor of the metric.
        try:
            made = metric()
        except TypeError as e:
            raise errors.MetricNotFunctionalError(
                f"The metric {metric!r} is a callable but not a zero-argument one; pass a "
                "keras.metrics.Metric object or a function returning one."
            ) from e
        if not isinstance(made, keras.metrics.Metric):
            raise errors.MetricNotFunctionalError(
                f"The metric constructor {metric!r} returned {made!r}, not a keras.metrics.Metric."
            )
        return made
    raise errors.MetricNotFunctionalError(
        f"A metric must be a keras.metrics.Metric, a metric name, or a zero-argument callable "
        f"returning a Metric; received {metric!r}."
    )


def functional_metric(metric: Any, y_true_example, y_pred_example) -> FunctionalMetric:
    """Turns one Keras metric (or name, or constructor) into a `FunctionalMetric`.

    Args:
      metric: the metric as the user gave it.
      y_true_example: labels of one output, [batch, ...], to check the metric traces.
      y_pred_example: predictions of that output, [batch, ...].

    Raises:
      MetricNotFunctionalError: the metric cannot run as pure functions under JAX.
    """
    original = _as_keras_metric(metric, y_true_example, y_pred_example)
    try:
        private = copy.deepcopy(original)
    except Exception:  # noqa: BLE001 - some custom metrics do not deep-copy; rebuild them.
        try:
            private = type(original).from_config(original.get_config())
        except Exception as e:  # noqa: BLE001
            raise errors.MetricNotFunctionalError(
                f"The metric {original.name!r} ({type(original).__name__}) can be neither "
                f"deep-copied nor rebuilt from its config ({type(e).__name__}: {e}); pass a "
                "zero-argument function that builds it, e.g. metrics=[lambda: MyMetric()]."
            ) from e
    if not private.variables:
        # Some metrics (e.g. F1Score) create their variables on the first update.
        private.update_state(np.asarray(y_true_example), np.asarray(y_pred_example))
    private.reset_state()
    initial = [np.array(v.value) for v in private.variables]
    name = private.name

    def init():
        return [jnp.asarray(value) for value in initial]

    def update(state, y_true, y_pred, mask):
        return private.stateless_update_state(state, y_true, y_pred, sample_weight=mask)

    def finalize(state):
        return private.stateless_result(state)

    mask = jnp.ones((np.shape(y_pred_example)[0],), jnp.float32)
    try:
        jax.eval_shape(lambda: finalize(update(init(), y_true_example, y_pred_example, mask)))
    except Exception as e:  # noqa: BLE001 - any failure means the metric is not functional.
        raise errors.MetricNotFunctionalError(
            f"The metric {name!r} ({type(original).__name__}) could not run as a pure JAX "
            f"function: {type(e).__name__}: {e}. Its update_state must change state only "
            "through its Keras variables."
        ) from e
    return FunctionalMetric(name, init, update, merge_by_sum, finalize)


def build_metric_suite(
    metrics: Any, output_names: Sequence[str], labels: list, predictions: list
) -> MetricSuite:
    """Builds the `MetricSuite` for `from_keras_model`'s ``metrics`` argument.

    Args:
      metrics: None; a list of metrics (applied to every output; names get the
        output name as prefix when there are several outputs); or a dict from
        output name to a metric or list of metrics.
      output_names: the model's outputs.
      labels: per-output example labels, to check that each metric traces.
      predictions: per-output example predictions.

    Raises:
      LossKeysError: a dict with keys that are not output names.
      MetricNotFunctionalError: a metric that cannot be made functional.
    """
    if metrics is None:
        return MetricSuite(())
    if isinstance(metrics, Mapping):
        unexpected = [k for k in metrics if k not in output_names]
        if unexpected:
            raise errors.LossKeysError(
                f"`metrics` is a dict whose keys must be output names {list(output_names)!r}; "
                f"unexpected {unexpected!r}."
            )
        per_output = {name: metrics.get(name, []) for name in output_names}
    else:
        per_output = {name: metrics for name in output_names}
    entries, names_seen = [], set()
    for index, name in enumerate(output_names):
        chosen = per_output[name]
        if not isinstance(chosen, (list, tuple)):
            chosen = [chosen]
        for metric in chosen:
            fm = functional_metric(metric, labels[index], predictions[index])
            if len(output_names) > 1:
                fm = fm._replace(name=f"{name}_{fm.name}")
            if fm.name in names_seen:
                raise errors.MetricNotFunctionalError(
                    f"Two metrics are named {fm.name!r}; give them distinct names "
                    "(e.g. keras.metrics.Mean(name='...'))."
                )
            names_seen.add(fm.name)
            entries.append((index, fm))
    return MetricSuite(tuple(entries))
