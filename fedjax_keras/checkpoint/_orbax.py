"""Save and restore a `ServerState`, client-state store included, with orbax.

A checkpoint is one orbax step directory ``<directory>/<round_num>/`` with two
items:

- ``arrays``: a flat ``{"000000": leaf, ...}`` dict of every array of the
  state: the leaves of the `ServerState` pytree (server model, optimizer state,
  round counter, seed, algorithm state) in `jax.tree.flatten` order, then the
  rows of the `ClientStateStore` table (``client_states`` is not a pytree leaf).
- ``meta``: JSON with the round, the leaf count and the store's client ids
  (ints, strings and tuples of them, type-tagged so they come back as they went in).

Flat leaves, not the state's own tree, are saved because orbax's tree
serialisation has no node for empty optax states or ``()`` and would rebuild
NamedTuples as dicts; restoring into ``jax.tree.unflatten`` of the caller's
template gives back the exact types. orbax writes every step to a temporary
directory and renames it when complete, so a run killed mid-save leaves the
previous checkpoint intact and `latest_round` never sees a partial one.

Example:
  >>> save_state("/tmp/run/checkpoints", state, int(state.round_num))  # doctest: +SKIP
  >>> state = restore_state("/tmp/run/checkpoints", process.initialize(seed=0))  # doctest: +SKIP
"""

import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from fedjax_keras.client import ClientStateStore


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the template state it is restored into.

    The template (``process.initialize(seed)`` of the same model and
    algorithm) fixes the number, shapes and dtypes of the arrays; a checkpoint
    written by another model, algorithm or optimizer cannot be restored into it.
    """


def _manager(directory, max_to_keep=None, create=True) -> ocp.CheckpointManager:
    # Synchronous saves: the round loop is blocked anyway, and a save that has
    # returned is on disk when a run is killed right after it.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)), options=options, item_names=("arrays", "meta")
    )


def _key(index: int) -> str:
    return f"{index:06d}"


def _encode_id(client_id):
    if isinstance(client_id, (bool, np.bool_)):
        raise TypeError(
            f"Client id {client_id!r} is a bool; checkpoints keep int, str or tuple ids."
        )
    if isinstance(client_id, (int, np.integer)):
        return ["int", int(client_id)]
    if isinstance(client_id, str):
        return ["str", client_id]
    if isinstance(client_id, tuple):
        return ["tuple", [_encode_id(part) for part in client_id]]
    raise TypeError(
        f"Client id {client_id!r} of type {type(client_id).__name__} cannot be checkpointed; "
        "use int, str or tuple ids."
    )


def _decode_id(encoded):
    kind, value = encoded
    if kind == "int":
        return int(value)
    if kind == "str":
        return str(value)
    return tuple(_decode_id(part) for part in value)


def save_state(directory, state, round_num: int, *, max_to_keep: int | None = None) -> str:
    """Writes ``state`` as the checkpoint of ``round_num`` under ``directory``.

    Args:
      directory: the checkpoints folder (created if missing).
      state: a `ServerState`.
      round_num: the step number (rounds completed, usually ``int(state.round_num)``).
      max_to_keep: keep only the newest this many checkpoints; None keeps all.

    Returns:
      The checkpoint's directory.

    Raises:
      TypeError: a client id is not an int, str or tuple of them.
    """
    leaves = jax.tree.leaves(state)
    arrays = {
        _key(i): np.asarray(leaf) if np.isscalar(leaf) else leaf for i, leaf in enumerate(leaves)
    }
    store = state.client_states
    meta = {"round": int(round_num), "num_leaves": len(leaves), "client_ids": None}
    if store is not None:
        ids = store.client_ids
        meta["client_ids"] = [_encode_id(cid) for cid in ids]
        table = jax.tree.leaves(store._table)
        for j, leaf in enumerate(table):
            arrays[_key(len(leaves) + j)] = leaf[: len(ids)]
    manager = _manager(directory, max_to_keep)
    manager.save(
        int(round_num),
        args=ocp.args.Composite(arrays=ocp.args.StandardSave(arrays), meta=ocp.args.JsonSave(meta)),
        force=True,
    )
    manager.wait_until_finished()
    manager.close()
    return os.path.join(os.path.abspath(os.fspath(directory)), str(int(round_num)))


def latest_round(directory) -> int | None:
    """The newest complete checkpoint's round under ``directory``, or None if there is none."""
    if not os.path.isdir(directory):
        return None
    manager = _manager(directory, create=False)
    step = manager.latest_step()
    manager.close()
    return step


def restore_state(directory, template_state, round_num: int | None = None):
    """Reads a checkpoint back into the shape of ``template_state``.

    Args:
      directory: the folder given to `save_state`.
      template_state: a `ServerState` of the same process, e.g.
        ``process.initialize(seed)``: it fixes the tree, the array types and,
        for the client-state store, the default row and placement.
      round_num: which checkpoint; None takes the newest.

    Returns:
      The saved `ServerState`, bit for bit.

    Raises:
      FileNotFoundError: no checkpoint (of that round) under ``directory``.
      CheckpointMismatchError: the checkpoint's arrays do not fit the template.
    """
    if round_num is None:
        round_num = latest_round(directory)
        if round_num is None:
            raise FileNotFoundError(f"No checkpoint under {os.fspath(directory)!r}.")
    manager = _manager(directory, create=False)
    if int(round_num) not in manager.all_steps():
        manager.close()
        raise FileNotFoundError(
            f"No checkpoint of round {round_num} under {os.fspath(directory)!r}; "
            f"it holds rounds {sorted(manager.all_steps())}."
        )
    meta = manager.restore(int(round_num), args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
        "meta"
    ]
    leaves, treedef = jax.tree.flatten(template_state)
    template_store = template_state.client_states
    if meta["num_leaves"] != len(leaves) or (meta["client_ids"] is None) != (
        template_store is None
    ):
        manager.close()
        raise CheckpointMismatchError(
            f"The checkpoint of round {round_num} in {os.fspath(directory)!r} holds "
            f"{meta['num_leaves']} state arrays (client states: {meta['client_ids'] is not None}); "
            f"the template has {len(leaves)} (client states: {template_store is not None}). "
            "Restore it with the model, algorithm and optimizer that wrote it."
        )
    targets = {
        _key(i): np.asarray(leaf) if np.isscalar(leaf) else leaf for i, leaf in enumerate(leaves)
    }
    ids = None
    if template_store is not None:
        ids = [_decode_id(encoded) for encoded in meta["client_ids"]]
        default_leaves, default_def = jax.tree.flatten(template_store.default)
        xp = jax.numpy if template_store.placement == "device" else np
        for j, leaf in enumerate(default_leaves):
            targets[_key(len(leaves) + j)] = xp.zeros((len(ids),) + leaf.shape, leaf.dtype)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, targets)
    try:
        arrays = manager.restore(
            int(round_num), args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
        )["arrays"]
    except (ValueError, KeyError) as error:
        raise CheckpointMismatchError(
            f"The checkpoint of round {round_num} in {os.fspath(directory)!r} does not fit the "
            f"template state: {error}"
        ) from None
    finally:
        manager.close()
    restored = []
    for i, leaf in enumerate(leaves):
        value = arrays[_key(i)]
        _check_leaf(value, leaf, i, round_num)
        restored.append(type(leaf)(value) if isinstance(leaf, np.generic) else value)
    state = jax.tree.unflatten(treedef, restored)
    if template_store is not None:
        table_leaves = [arrays[_key(len(leaves) + j)] for j in range(len(default_leaves))]
        if template_store.placement == "host":
            table_leaves = [np.asarray(leaf) for leaf in table_leaves]
        store = ClientStateStore(
            template_store.default,
            template_store.placement,
            _rows={cid: row for row, cid in enumerate(ids)},
            _table=jax.tree.unflatten(default_def, table_leaves),
        )
        state = state.replace(client_states=store)
    return state


def _check_leaf(value, template_leaf, index, round_num) -> None:
    expected = (
        np.shape(template_leaf),
        np.asarray(template_leaf).dtype if np.isscalar(template_leaf) else template_leaf.dtype,
    )
    received = (np.shape(value), value.dtype)
    if expected != received:
        raise CheckpointMismatchError(
            f"State array {index} of the round-{round_num} checkpoint has shape and dtype "
            f"{received}; the template expects {expected}. Restore it with the model, "
            "algorithm and optimizer that wrote it."
        )
