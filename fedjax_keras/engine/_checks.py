"""Checks of a round's inputs, before anything is compiled: the state and the cohort.

A cohort may be a `FederatedData` or a list of client datasets (`as_cohort`
normalises it, once, at this boundary).

Each raises one clear error naming what differs: a `StateMismatchError` for a
state built by another process, a ValueError for examples the model rejects.
"""

import jax
import numpy as np

from fedjax_keras.data import FederatedData
from fedjax_keras.engine._state import ServerState
from fedjax_keras.errors import StateMismatchError
from fedjax_keras.models import Model


def as_cohort(cohort) -> FederatedData:
    """Accepts a `FederatedData` or a list of per-client dicts / (x, y) tuples."""
    if isinstance(cohort, FederatedData):
        return cohort
    if isinstance(cohort, (list, tuple)):
        return FederatedData.from_client_list(list(cohort))
    raise TypeError(
        "A cohort must be a FederatedData (e.g. data.sample_clients(...)) or a list of "
        f"per-client {{'x': ..., 'y': ...}} dicts or (x, y) tuples; received "
        f"{type(cohort).__name__}."
    )


def checked_cohort(cohort, *, keeps_client_state: bool, name: str) -> FederatedData:
    """The cohort as a `FederatedData`, checked to have clients and, if needed, stable ids.

    Raises:
      TypeError: a list of client datasets for an algorithm that keeps per-client
        state (its clients need population ids).
      ValueError: a cohort without clients.
    """
    from_list = not isinstance(cohort, FederatedData)
    cohort = as_cohort(cohort)
    if from_list and keeps_client_state:
        raise TypeError(
            f"{name} keeps state per client, so a cohort must carry stable client "
            "ids: pass a FederatedData sampled from the population (e.g. "
            "data.sample_clients(...)), not a list of client datasets."
        )
    if cohort.num_clients == 0:
        raise ValueError("The cohort has no clients; sample at least one client per round.")
    return cohort


def table_without_rows(table):
    """The table's default row alone: its row count varies with the population."""
    return None if table is None else table.default


def state_template(initial: ServerState):
    """``(template, treedef, leaf shapes)`` of a process's states, client table rows aside.

    Args:
      initial: the process's initial state (abstract, from `jax.eval_shape`, will do).
    """
    template = initial.replace(client_states=table_without_rows(initial.client_states))
    leaves, treedef = jax.tree.flatten(template)
    return template, treedef, [np.shape(a) for a in leaves]


def check_state(state, template_treedef_shapes, name: str) -> None:
    """Raises a `StateMismatchError` naming what differs when ``state`` is not the process's.

    Args:
      state: what ``next`` received.
      template_treedef_shapes: from `state_template`.
      name: the process's name, for the message.
    """
    if not isinstance(state, ServerState):
        raise StateMismatchError(
            f"{name}.next expects the ServerState of its own initialize/next; "
            f"received {type(state).__name__}."
        )
    template, treedef, shapes = template_treedef_shapes
    # Hyper-parameters in the state (a sweep's run) are checked where they are used.
    mine = state.replace(client_states=table_without_rows(state.client_states), hyperparams={})
    leaves, received = jax.tree.flatten(mine)
    if received == treedef and [np.shape(a) for a in leaves] == shapes:
        return
    for part in ("model", "optimizer_state", "algorithm_state", "aggregator_state"):
        compare_trees(part, getattr(template, part), getattr(state, part), name)
    table, expected = state.client_states, template.client_states
    if (table is None) != (expected is None):
        raise StateMismatchError(
            f"The state {'has' if table is not None else 'lacks'} a client table but "
            f"{name} {'keeps no' if expected is None else 'keeps a'} per-client state: "
            "it was built by another process (algorithm). Use this process's initialize()."
        )
    compare_trees("client_states", expected, mine.client_states, name)


def compare_trees(part: str, expected, received, name: str) -> None:
    """Raises a `StateMismatchError` listing missing, unexpected and reshaped paths."""
    expected_paths = {
        jax.tree_util.keystr(p): (tuple(np.shape(v)), np.dtype(v.dtype))
        for p, v in jax.tree_util.tree_flatten_with_path(expected)[0]
    }
    try:
        received_paths = {
            jax.tree_util.keystr(p): (tuple(np.shape(v)), np.dtype(getattr(v, "dtype", None)))
            for p, v in jax.tree_util.tree_flatten_with_path(received)[0]
        }
    except TypeError as e:
        raise StateMismatchError(
            f"state.{part} is not a pytree of arrays ({e}); was the state built by {name}?"
        ) from None
    if jax.tree.structure(expected) == jax.tree.structure(received) and all(
        received_paths.get(path, (None, None))[0] == shape
        for path, (shape, _) in expected_paths.items()
    ):
        return
    missing = sorted(set(expected_paths) - set(received_paths))
    unexpected = sorted(set(received_paths) - set(expected_paths))
    reshaped = [
        f"{path} {received_paths[path][0]} (expected {shape})"
        for path, (shape, _) in expected_paths.items()
        if path in received_paths and received_paths[path][0] != shape
    ]
    details = (
        "; ".join(
            text
            for text in (
                f"missing {missing[:5]}" if missing else "",
                f"unexpected {unexpected[:5]}" if unexpected else "",
                f"different shapes: {', '.join(reshaped[:5])}" if reshaped else "",
            )
            if text
        )
        or "a different tree structure"
    )
    raise StateMismatchError(
        f"state.{part} does not fit {name} ({details}): the state was built by another process "
        "(model, algorithm or optimizer). Use this process's initialize() or restore a "
        "checkpoint it wrote."
    )


def cohort_signature(cohort: FederatedData):
    """What decides whether a cohort fits a model: tree structure, per-example shapes, dtypes."""
    source, _ = cohort.source_rows
    leaves, treedef = jax.tree.flatten(source)
    return treedef, tuple((np.shape(a)[1:], np.asarray(a).dtype) for a in leaves)


def check_cohort_fits(model: Model, cohort: FederatedData) -> None:
    """Raises one clear ValueError when the cohort's examples do not fit the model.

    Traces the model's loss on one example of the cohort's shapes (abstractly,
    nothing runs), before anything is compiled: variable lengths the model
    accepts pass, what it rejects is named.
    """
    source, _ = cohort.source_rows
    one = jax.tree.map(lambda a: jax.ShapeDtypeStruct((1,) + np.shape(a)[1:], a.dtype), source)
    try:
        jax.eval_shape(lambda w, b: model.loss(w, b, training=False), model.initial_weights, one)
    except Exception as e:  # noqa: BLE001 - any failure means the data does not fit.
        shapes = jax.tree.map(lambda a: (tuple(np.shape(a)[1:]), str(a.dtype)), source)
        expected = jax.tree.map(lambda s: (tuple(s.shape[1:]), str(s.dtype)), model.input_spec)
        raise ValueError(
            f"The cohort's examples (per-example shape, dtype: {shapes}) do not fit the model "
            f"(wrapped with {expected}): {type(e).__name__}: {e}"
        ) from e
