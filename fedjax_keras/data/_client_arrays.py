"""Checks and normalisation of the arrays a `FederatedData` is built from.

Each check raises at construction, naming the argument and what was received;
arrays are kept as read-only views, never copied unless a leaf must be converted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from jax import tree_util

from fedjax_keras._numbers import is_integer


def is_int(value) -> bool:
    return is_integer(value)


def take_rows(tree: Any, rows: np.ndarray) -> Any:
    return tree_util.tree_map(lambda a: np.take(a, rows, axis=0), tree)


def read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.flags.writeable = False
    return view


def check_xy_keys(examples: Mapping, name: str) -> None:
    keys = set(examples)
    if keys != {"x", "y"}:
        missing = sorted({"x", "y"} - keys)
        extra = sorted(keys - {"x", "y"}, key=repr)
        raise ValueError(
            f"{name} must have exactly the keys 'x' and 'y'; missing {missing}, unexpected "
            f"{extra}. Put several inputs or targets in a dict under 'x' or 'y'."
        )


def normalise_client(examples: Any, what: str) -> Mapping:
    if isinstance(examples, Mapping):
        check_xy_keys(examples, what)
        return examples
    if isinstance(examples, tuple) and len(examples) == 2:
        return {"x": examples[0], "y": examples[1]}
    raise TypeError(
        f"{what} must be a dict {{'x': ..., 'y': ...}} or a tuple (x, y), got "
        f"{type(examples).__name__}"
        f"{f' of length {len(examples)}' if isinstance(examples, tuple) else ''}."
    )


def as_leaf_arrays(tree: Any, name: str) -> Any:
    """Converts every leaf of ``tree`` to a read-only numpy array [N, ...]."""
    leaves_with_paths, treedef = tree_util.tree_flatten_with_path(tree)
    if not leaves_with_paths:
        raise ValueError(f"{name} holds no array (got {tree!r}); expected an array [N, ...].")
    arrays = []
    for path, leaf in leaves_with_paths:
        if isinstance(leaf, np.ndarray) and leaf.dtype != object and leaf.ndim:
            arrays.append(read_only(leaf))  # the common case, without building a name
            continue
        where = f"{name}{tree_util.keystr(path)}"
        try:
            array = np.asarray(leaf)
        except Exception as e:  # numpy raises several types for ragged input.
            raise TypeError(
                f"{where} cannot be converted to a numpy array ({e}); got {type(leaf).__name__}."
            ) from e
        if array.dtype == object:
            raise TypeError(
                f"{where} must be a numeric (or string) array [N, ...], got {type(leaf).__name__} "
                "that numpy can only hold as dtype=object (ragged or non-numeric)."
            )
        if array.ndim == 0:
            raise ValueError(
                f"{where} must be an array [N, ...] with a leading examples axis, got a scalar "
                f"{leaf!r}. (A nested Python list is read as a pytree: wrap it in np.asarray.)"
            )
        arrays.append(read_only(array))
    return tree_util.tree_unflatten(treedef, arrays)


def common_leading_dim(x: Any, y: Any, name: str = "examples") -> int:
    leading = {leaf.shape[0] for leaf in tree_util.tree_leaves((x, y))}
    if len(leading) == 1:
        return leading.pop()
    dims = {}
    for part, tree in (("x", x), ("y", y)):
        for path, leaf in tree_util.tree_flatten_with_path(tree)[0]:
            dims[f"{part}{tree_util.keystr(path)}"] = leaf.shape[0]
    if len(set(dims.values())) > 1:
        raise ValueError(
            f"all arrays in {name} must share the leading (examples) dimension N; got leading "
            f"dimensions {dims}."
        )
    return next(iter(dims.values()))


def check_offsets(client_offsets: Any, n: int) -> np.ndarray:
    offsets = np.asarray(client_offsets)
    if offsets.ndim != 1 or offsets.size == 0:
        raise ValueError(
            f"client_offsets must be a 1-D array [num_clients + 1], got shape {offsets.shape}."
        )
    if not (np.issubdtype(offsets.dtype, np.integer) or offsets.dtype == bool):
        raise TypeError(f"client_offsets must hold integers, got dtype {offsets.dtype}.")
    offsets = offsets.astype(np.int64)
    if offsets[0] != 0 or offsets[-1] != n or np.any(np.diff(offsets) < 0):
        bad = np.flatnonzero(np.diff(offsets) < 0)
        detail = f"; it decreases after index {int(bad[0])}" if bad.size else ""
        raise ValueError(
            f"client_offsets must be non-decreasing from 0 to N={n} (the number of examples, "
            f"so that no example is dropped), got {_short(offsets)}{detail}."
        )
    return read_only(offsets)


def check_ids(client_ids: Any, num_clients: int) -> tuple:
    if client_ids is None:
        return tuple(range(num_clients))
    if isinstance(client_ids, (str, bytes)):
        raise TypeError(f"client_ids must be a sequence of ids, got the string {client_ids!r}.")
    ids = tuple(client_ids)
    if len(ids) != num_clients:
        raise ValueError(
            f"client_ids must have one id per client ({num_clients}), got {len(ids)} ids."
        )
    try:
        unique = set(ids)
    except TypeError as e:
        raise TypeError(f"client_ids must be hashable ({e}).") from e
    if len(unique) != len(ids):
        seen, duplicates = set(), []
        for i in ids:
            if i in seen:
                duplicates.append(i)
            seen.add(i)
        raise ValueError(f"client_ids must be distinct, got duplicates {duplicates[:5]!r}.")
    return ids


def check_positions(positions: Any, num_clients: int) -> np.ndarray:
    pos = np.asarray(positions)
    if pos.ndim != 1:
        raise ValueError(
            f"positions must be a 1-D array of client positions, got shape {pos.shape}."
        )
    if pos.size == 0:
        return np.zeros(0, np.int64)
    if not np.issubdtype(pos.dtype, np.integer):
        raise TypeError(f"positions must be integers, got dtype {pos.dtype}.")
    pos = pos.astype(np.int64, copy=False)
    if pos.min() < 0 or pos.max() >= num_clients:
        raise ValueError(
            f"positions must be in [0, {num_clients}) for {num_clients} clients, got {_short(pos)}."
        )
    return pos


def _short(array: np.ndarray) -> str:
    return np.array2string(array, threshold=12, edgeitems=4, separator=", ")
