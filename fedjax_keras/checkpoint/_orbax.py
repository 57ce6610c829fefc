"""Save and restore a `ServerState` with orbax.

A checkpoint is one orbax step directory ``<directory>/<round_num>/`` with two
items:

- ``arrays``: a flat ``{"000000": leaf, ...}`` dict of every array of the
  state: the leaves of the `ServerState` pytree (server model, optimizer
  state, algorithm and aggregator state, the client table, round counter,
  seed) in `jax.tree.flatten` order;
- ``meta``: JSON with the round and the leaf count.

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


class CheckpointMismatchError(ValueError):
    """A checkpoint does not fit the template state it is restored into.

    The template (``process.initialize(seed)`` of the same model and
    algorithm) fixes the number, shapes and dtypes of the arrays; a checkpoint
    written by another model, algorithm or optimizer cannot be restored into it.
    """


def _manager(directory, max_to_keep=None, create=True) -> ocp.CheckpointManager:
    # Synchronous saves: the round loop is blocked anyway, and a save that has
    # returned is on disk when a run is killed right after it.
    extra = {}
    if jax.process_count() > 1:
        # A multi-process run's state is replicated: process 0 alone reads and
        # writes it (the CLI broadcasts a restored state to the others).
        extra["multiprocessing_options"] = ocp.options.MultiprocessingOptions(
            primary_host=jax.process_index(), active_processes={jax.process_index()}
        )
        if create:  # orbax leaves the root to us when only some processes take part
            os.makedirs(os.path.abspath(os.fspath(directory)), exist_ok=True)
            create = False
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False, **extra
    )
    return ocp.CheckpointManager(
        os.path.abspath(os.fspath(directory)), options=options, item_names=("arrays", "meta")
    )


def _key(index: int) -> str:
    return f"{index:06d}"


def save_state(directory, state, round_num: int, *, max_to_keep: int | None = None) -> str:
    """Writes ``state`` as orbax's checkpoint of ``round_num``; returns its directory.

    The arguments are `fedjax_keras.checkpoint.save_state`'s, which adds the manifest.
    """
    leaves = jax.tree.leaves(state)
    several = jax.process_count() > 1
    arrays = {
        # Several processes: host copies of the replicated arrays, which one process writes.
        _key(i): np.asarray(leaf) if several or np.isscalar(leaf) else leaf
        for i, leaf in enumerate(leaves)
    }
    meta = {"round": int(round_num), "num_leaves": len(leaves)}
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
        ``process.initialize(seed)``: it fixes the tree and every array's
        shape and type (a process with a client table needs
        ``population_size`` to size it).
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
    if meta["num_leaves"] != len(leaves):
        manager.close()
        raise CheckpointMismatchError(
            f"The checkpoint of round {round_num} in {os.fspath(directory)!r} holds "
            f"{meta['num_leaves']} state arrays; the template has {len(leaves)}. "
            "Restore it with the model, algorithm and optimizer that wrote it."
        )
    targets = {
        _key(i): np.asarray(leaf) if np.isscalar(leaf) else leaf for i, leaf in enumerate(leaves)
    }
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, targets)
    try:
        arrays = manager.restore(
            int(round_num), args=ocp.args.Composite(arrays=ocp.args.StandardRestore(abstract))
        )["arrays"]
    except (ValueError, KeyError) as error:
        raise CheckpointMismatchError(
            f"The checkpoint of round {round_num} in {os.fspath(directory)!r} does not fit the "
            f"template state (restore it with the model, algorithm, optimizer and "
            f"population_size that wrote it): {error}"
        ) from None
    finally:
        manager.close()
    restored = []
    for i, leaf in enumerate(leaves):
        value = arrays[_key(i)]
        _check_leaf(value, leaf, i, round_num)
        restored.append(type(leaf)(value) if isinstance(leaf, np.generic) else value)
    return jax.tree.unflatten(treedef, restored)


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
            "algorithm and optimizer that wrote it (and the same population_size)."
        )
