"""A round's results on the host: metrics, per-client reports, the state's counters.

What `FederatedProcess.next` and `Sweep.next` do alike once a round's compiled
programs have returned: metrics fetched to Python numbers, the clients'
reports put back in cohort order, and the new state's round counters
(`advance`).
"""

import warnings

import jax
import numpy as np

from fedjax_keras.engine._state import ServerState


def to_host_metrics(metrics: dict) -> dict:
    """Device metrics -> Python ints / floats (scalars) and NumPy arrays (vectors)."""
    result = {}
    for name, value in jax.device_get(metrics).items():
        array = np.asarray(value)
        if array.ndim == 0:
            result[name] = int(array) if array.dtype.kind in "iub" else float(array)
        else:
            result[name] = array
    return result


def client_reports(reports, plan) -> dict:
    """``clients/<name>`` arrays [cohort], in cohort order, from the reports by slot.

    Args:
      reports: the round's per-slot reports (leaves [slots, ...]), or ``()``.
      plan: the round's `fedjax_keras.data.CohortPlan` (its ``slot_positions``).
    """
    if reports == ():
        return {}
    slot_positions = np.asarray(plan.slot_positions)
    real = slot_positions >= 0
    result = {}
    for path, values in jax.tree_util.tree_flatten_with_path(jax.device_get(reports))[0]:
        keys = [str(getattr(k, "key", getattr(k, "idx", k))) for k in path]
        name = "/".join(keys[1:] if keys[0] == "report" else keys)
        values = np.asarray(values)
        ordered = np.empty((int(real.sum()),) + values.shape[1:], values.dtype)
        ordered[slot_positions[real]] = values[real]
        result[f"clients/{name}"] = ordered
    return result


def advance(
    new_state: ServerState, previous: ServerState, *, nonfinite: bool, round_num: int, seed: int
) -> ServerState:
    """The new state with its round counters: one more round, the non-finite streak.

    Args:
      new_state: what the round's finish returned.
      previous: the state the round started from.
      nonfinite: whether the round's server update was not finite (not applied).
      round_num: the round's number.
      seed: the run's seed.
    """
    streak = int(previous.nonfinite_rounds) + 1 if nonfinite else 0
    return new_state.replace(
        round_num=np.int64(round_num + 1),
        seed=np.int64(seed),
        nonfinite_rounds=np.int64(streak),
    )


def finish_host_metrics(metrics: dict, new_state: ServerState, round_plan, hooks) -> dict:
    """The round's host-side metrics: unreliable clients, padding, the ``host_metrics`` hooks.

    Args:
      metrics: the round's metrics on the host (updated in place and returned).
      new_state: the round's new state, handed to the hooks.
      round_plan: the round's `fedjax_keras.engine._plan.RoundPlan`.
      hooks: ``EngineOptions.host_metrics``: functions ``(state, metrics) -> dict``.

    Raises:
      TypeError: a hook returned something other than a dict.
    """
    reported, work = round_plan.clients.reported, round_plan.clients.work
    if reported is not None:
        metrics["num_unreported_clients"] = int(np.sum(~reported))
        metrics["num_stragglers"] = int(np.sum(reported & (work < 1)))
    metrics["padding_fraction"] = float(round_plan.cohort_plan.padding_fraction)
    for hook in hooks:
        extra = hook(new_state, dict(metrics))
        if not isinstance(extra, dict):
            raise TypeError(
                f"host_metrics function {hook!r} returned {type(extra).__name__}; expected "
                "a dict of metric names to values."
            )
        metrics.update(extra)
    warn_if_empty(metrics, round_plan.round_num)
    return metrics


def nonfinite_message(name: str, round_num: int, state: ServerState, flags, streak: int) -> str:
    """The `NonFiniteServerUpdateError` message, naming the non-finite leaves.

    ``flags`` is bool [leaves]: per leaf of (model, optimizer_state,
    algorithm_state), whether its update was finite.
    """
    paths = [
        f"{part}{jax.tree_util.keystr(path)}"
        for part in ("model", "optimizer_state", "algorithm_state")
        for path, _ in jax.tree_util.tree_flatten_with_path(getattr(state, part))[0]
    ]
    bad = [path for path, ok in zip(paths, flags) if not ok]
    return (
        f"{name}: the server update of round {round_num} was not finite in {', '.join(bad[:5])}"
        f"{' and more' if len(bad) > 5 else ''} ({streak} consecutive round(s)); it was not "
        "applied. Lower the server learning rate or check the server optimizer; pass "
        "max_nonfinite_rounds=N to tolerate N-1 such rounds in a row."
    )


def warn_if_empty(metrics: dict, round_num: int) -> None:
    """A RuntimeWarning when no example counted in the round (its loss is NaN)."""
    if metrics["num_examples"] > 0:
        return
    dropped, empty = metrics["num_dropped_clients"], metrics["num_empty_clients"]
    if dropped:
        why = f"all {dropped} client(s) with examples had non-finite results and were dropped"
    elif empty:
        why = f"the cohort's {empty} client(s) hold no examples"
    else:
        why = "no client counted"
    warnings.warn(
        f"Round {round_num}: {why}; the loss and the model's metrics are NaN and the model "
        "was not updated.",
        RuntimeWarning,
        stacklevel=3,
    )
