"""The distribution of a metric across clients: mean and percentiles, as round metrics.

Averages hide the clients a model serves badly; fairness and personalization
papers report percentiles of per-client accuracy. A round returns every
client's own values as ``metrics['clients/<name>']`` (arrays [cohort], from
`ClientOutput.report`, e.g. ``build_fed_eval(per_client=True)``);
`client_percentiles` turns them into scalars on the host, after the round,
as an engine ``host_metrics`` function.
"""

from collections.abc import Callable, Sequence

import numpy as np

PERCENTILES = (10, 25, 50, 75, 90)
_PREFIX = "clients/"


def client_percentiles(
    names: Sequence[str] | None = None,
    percentiles: Sequence[float] = PERCENTILES,
    *,
    count: str = "num_examples",
) -> Callable[[object, dict], dict]:
    """A ``host_metrics`` function: the mean and percentiles of per-client metrics.

    For each float array ``metrics['clients/<name>']`` [cohort] (every one,
    or those in ``names``), over the clients whose ``clients/<count>`` is
    positive (when the round reports it) and whose value is finite (a client
    without examples reports NaN), it adds ``per_client/<name>/mean`` and
    ``per_client/<name>/p<q>`` for each ``q`` (numpy's linear interpolation);
    NaN when no client qualifies.

    Args:
      names: the per-client metrics to summarize (None: every float one).
      percentiles: in [0, 100].
      count: the per-client example count that marks clients with examples.

    Returns:
      ``(state, metrics) -> dict``, for the engine option ``host_metrics=``.

    Raises:
      ValueError: a percentile outside [0, 100].

    Example:
      >>> evaluate = build_fed_eval(model, per_client=True,
      ...                           host_metrics=client_percentiles(["loss"], (50,)))
    """
    qs = tuple(percentiles)
    if not all(isinstance(q, (int, float)) and 0 <= q <= 100 for q in qs):
        raise ValueError(f"percentiles must be numbers in [0, 100]; received {percentiles!r}.")
    wanted = None if names is None else set(names)

    def summarize(state, metrics: dict) -> dict:
        del state
        counts = metrics.get(_PREFIX + count)
        result = {}
        for key, values in metrics.items():
            name = key[len(_PREFIX) :]
            if not key.startswith(_PREFIX) or (wanted is not None and name not in wanted):
                continue
            values = np.asarray(values)
            if values.ndim != 1 or values.dtype.kind != "f":
                continue
            kept = np.isfinite(values)
            if counts is not None and len(counts) == len(values):
                kept &= np.asarray(counts) > 0
            chosen = values[kept].astype(np.float64)
            empty = len(chosen) == 0
            result[f"per_client/{name}/mean"] = float("nan") if empty else float(chosen.mean())
            for q in qs:
                label = f"{q:g}"
                value = float("nan") if empty else float(np.percentile(chosen, q))
                result[f"per_client/{name}/p{label}"] = value
        return result

    return summarize


def add_host_metric(engine_options: dict, hook) -> dict:
    """``engine_options`` with ``hook`` appended to its ``host_metrics`` (kept first)."""
    hooks = engine_options.get("host_metrics", ())
    if callable(hooks):
        hooks = (hooks,)
    if not isinstance(hooks, (tuple, list)):
        return engine_options  # EngineOptions rejects it with its own message.
    return {**engine_options, "host_metrics": (*hooks, hook)}
