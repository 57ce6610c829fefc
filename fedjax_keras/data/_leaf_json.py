"""LEAF JSON files (``{'users', 'num_samples', 'user_data'}``) -> federated data."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Iterator

import numpy as np

from fedjax_keras.data._federated_data import FederatedData
from fedjax_keras.data._loaders import ClientDict, Preprocess, collect, existing_path


def iter_leaf_json_clients(path_or_dir: str | os.PathLike) -> Iterator[tuple[str, ClientDict]]:
    """Yields the users of LEAF JSON files, one file in memory at a time.

    A LEAF file is `{"users": [id, ...], "num_samples": [n, ...], "user_data":
    {id: {"x": [...], "y": [...]}}}`; a directory's `*.json` files are read in
    name order (LEAF splits FEMNIST and Shakespeare over several files).

    Args:
      path_or_dir: a .json file or a directory of them.

    Yields:
      (user_id, {'x': list, 'y': list}) per user, values as parsed from JSON.

    A user that is in `user_data` but not in `users` has no `num_samples`
    entry to check its data against: it is skipped with a `UserWarning` that
    names it.

    Raises:
      FileNotFoundError: if the path does not exist or a directory has no .json file.
      json.JSONDecodeError: if a file is not valid JSON (the message names the file).
      KeyError: if a file lacks `users`, `num_samples` or `user_data`, or a user's data.
      ValueError: if a file is not UTF-8, its keys hold the wrong kinds of values
        (`users` a string, `user_data` a list, ...), `num_samples` disagrees with a
        user's data, or a user appears twice; the message names the file and user.
    """
    return _iter_leaf(_leaf_files(path_or_dir))


def load_leaf_json(
    path_or_dir: str | os.PathLike, preprocess: Preprocess | None = None
) -> FederatedData:
    """Loads LEAF JSON files (FEMNIST, Shakespeare, Sent140, Synthetic, ...).

    Without `preprocess`, each user's `x` and `y` become numpy arrays with
    JSON floats as float32 and JSON integers as int32 (JAX's default widths;
    float64 would double FEMNIST's memory). With it, `preprocess` receives
    `{'x': list, 'y': list}` as parsed and returns `{'x': ..., 'y': ...}`.

    Args:
      path_or_dir: a .json file or a directory of them (see `iter_leaf_json_clients`).
      preprocess: optional `client_dict -> {'x': [n, ...], 'y': [n, ...]}`.

    Returns:
      FederatedData whose client ids are LEAF's user ids, in file order.

    Raises:
      As `iter_leaf_json_clients`; ValueError if `preprocess` returns no 'x' or 'y'.

    Example:
      >>> femnist = load_leaf_json("leaf/data/femnist/data/train")  # doctest: +SKIP
      >>> femnist.examples["x"].shape  # doctest: +SKIP
      (N, 784)
    """
    return collect(iter_leaf_json_clients(path_or_dir), preprocess, _leaf_arrays, path_or_dir)


def _leaf_files(path_or_dir) -> list[str]:
    path = existing_path(path_or_dir)
    if not os.path.isdir(path):
        return [path]
    files = sorted(os.path.join(path, n) for n in os.listdir(path) if n.endswith(".json"))
    if not files:
        raise FileNotFoundError(f"The directory {path} holds no .json file.")
    return files


def _iter_leaf(files: Iterable[str]):
    seen = set()
    for file in files:
        blob = _read_json(file)
        for key in ("users", "num_samples", "user_data"):
            if key not in blob:
                raise KeyError(
                    f"{file} has no {key!r} key, so it is not a LEAF file; LEAF files hold "
                    f"'users', 'num_samples' and 'user_data', this one {sorted(blob)!r}."
                )
        users, counts, user_data = _leaf_lists(file, blob)
        for user, count in zip(users, counts):
            if user in seen:
                raise ValueError(f"User {user!r} of {file} appears twice among the files.")
            seen.add(user)
            data = user_data.get(user)
            if data is None or (isinstance(data, dict) and ("x" not in data or "y" not in data)):
                raise KeyError(f"{file} has no 'x' and 'y' under user_data[{user!r}].")
            if not isinstance(data, dict):
                raise ValueError(
                    f"{file}: user_data[{user!r}] must be an object {{'x': [...], 'y': [...]}}; "
                    f"received {_json_kind(data)}."
                )
            for key in ("x", "y"):
                if not isinstance(data[key], list):
                    raise ValueError(
                        f"{file}: user_data[{user!r}][{key!r}] must be a list of examples; "
                        f"received {_json_kind(data[key])}."
                    )
            if not len(data["x"]) == len(data["y"]) == count:
                raise ValueError(
                    f"{file}: user {user!r} has num_samples {count} but {len(data['x'])} x "
                    f"and {len(data['y'])} y entries; the file is corrupt or truncated."
                )
            yield user, {"x": data["x"], "y": data["y"]}


def _read_json(file: str) -> dict:
    """The JSON object in ``file``; errors name the file."""
    try:
        with open(file, encoding="utf-8") as fh:
            blob = json.load(fh)
    except json.JSONDecodeError as error:
        raise json.JSONDecodeError(
            f"{file} is not valid JSON ({error.msg})", error.doc, error.pos
        ) from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{file} is not UTF-8 text, so not JSON ({error.reason}).") from None
    if not isinstance(blob, dict):
        raise ValueError(
            f"{file} holds {_json_kind(blob)}; expected a LEAF object with 'users', "
            "'num_samples' and 'user_data'."
        )
    return blob


def _leaf_lists(file: str, blob: dict) -> tuple[list, list, dict]:
    """``users``, ``num_samples`` and ``user_data`` of a LEAF file, their kinds checked."""
    users, counts, user_data = blob["users"], blob["num_samples"], blob["user_data"]
    if not isinstance(users, list):
        raise ValueError(
            f"{file}: 'users' must be a list of user ids; received {_json_kind(users)}: "
            f"{_short(users)}."
        )
    for user in users:
        if not isinstance(user, (str, int)) or isinstance(user, bool):
            raise ValueError(
                f"{file}: user id {_short(user)} is {_json_kind(user)}; expected a string."
            )
    if not isinstance(counts, list) or not all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts
    ):
        raise ValueError(
            f"{file}: 'num_samples' must be a list of ints >= 0; received "
            f"{_json_kind(counts)}: {_short(counts)}."
        )
    if not isinstance(user_data, dict):
        raise ValueError(
            f"{file}: 'user_data' must map user ids to their data; received "
            f"{_json_kind(user_data)}."
        )
    if len(users) != len(counts):
        raise ValueError(f"{file} lists {len(users)} users but {len(counts)} num_samples entries.")
    listed = set(users)
    unlisted = [user for user in user_data if user not in listed]
    if unlisted:
        names = ", ".join(repr(user) for user in unlisted[:5])
        more = f" and {len(unlisted) - 5} more" if len(unlisted) > 5 else ""
        warnings.warn(
            f"{file}: user {names}{more} is in user_data but not in 'users'; it is skipped "
            "(add it to 'users' and 'num_samples' to load it).",
            UserWarning,
            stacklevel=4,
        )
    return users, counts, user_data


def _json_kind(value) -> str:
    """``value``'s JSON kind with its article: 'a list', 'an object', 'null'."""
    names = {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a bool",
        int: "an int",
        float: "a float",
        type(None): "null",
    }
    return names.get(type(value), f"a {type(value).__name__}")


def _short(value, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _leaf_arrays(client: ClientDict) -> ClientDict:
    return {key: _narrow(np.asarray(value)) for key, value in client.items()}


def _narrow(array: np.ndarray) -> np.ndarray:
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.int32)
    return array
