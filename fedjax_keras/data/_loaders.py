"""Loaders for federated data sets on disk: TFF HDF5 and LEAF JSON.

Both formats are read client by client: `iter_tff_h5_clients` and
`iter_leaf_json_clients` are generators that hold one client (HDF5) or one file
(LEAF) in memory at a time, and `load_tff_h5` / `load_leaf_json` build a
`FederatedData` from them, passing each client through an optional
`preprocess(client_dict) -> {'x': ..., 'y': ...}` hook. Two hooks for the
common TFF data sets are here: `emnist_preprocess` and `shakespeare_preprocess`
(built on `shakespeare_char_ids`).

h5py is needed for the HDF5 functions only and is imported when they are called.
"""

from __future__ import annotations

import itertools
import json
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from fedjax_keras.data._federated_data import FederatedData

ClientDict = dict[str, Any]
Preprocess = Callable[[ClientDict], ClientDict]

# TFF's Shakespeare character vocabulary (tff.simulation.baselines.shakespeare);
# character SHAKESPEARE_CHAR_VOCAB[i] has id i + 1.
SHAKESPEARE_CHAR_VOCAB = (
    "dhlptx@DHLPTX $(,048cgkoswCGKOSW[_#'/37;?bfjnrvzBFJNRVZ\"&*.26:\naeimquyAEIMQUY]!%)-159\r"
)
_PAD = 0
_OOV = len(SHAKESPEARE_CHAR_VOCAB) + 1
_BOS = len(SHAKESPEARE_CHAR_VOCAB) + 2
_EOS = len(SHAKESPEARE_CHAR_VOCAB) + 3
# Ids 0 (pad) .. 89 (end of snippet): the size of a model's embedding table.
SHAKESPEARE_VOCAB_SIZE = len(SHAKESPEARE_CHAR_VOCAB) + 4
# Snippets are split into bytes, as TFF does; bytes outside the ASCII
# vocabulary (parts of non-ASCII characters included) become the OOV id.
_BYTE_TO_ID = np.full(256, _OOV, np.int32)
_BYTE_TO_ID[[ord(c) for c in SHAKESPEARE_CHAR_VOCAB]] = np.arange(
    1, len(SHAKESPEARE_CHAR_VOCAB) + 1, dtype=np.int32
)


# ----------------------------------------------------------------------------- TFF HDF5


def iter_tff_h5_clients(
    path: str | os.PathLike,
    client_ids: Sequence[str] | None = None,
    features: Sequence[str] | None = None,
) -> Iterator[tuple[str, dict[str, np.ndarray]]]:
    """Yields the clients of a TFF HDF5 file one at a time.

    TFF's `FilePerUserClientData` HDF5 files (EMNIST, Shakespeare,
    StackOverflow, CIFAR-100) hold one group per client, `examples/<client_id>`,
    with one dataset per feature, e.g. `examples/f0000_14/pixels` [n, 28, 28]
    and `examples/f0000_14/label` [n]. Only the current client's arrays are in
    memory; the file stays open until the generator is exhausted or closed.
    String features (Shakespeare's `snippets`) come back as object arrays of `bytes`.

    Args:
      path: the .h5 file.
      client_ids: clients to read, in this order; default all, in file order.
      features: features to read; default every dataset of the client.

    Yields:
      (client_id, {feature: array [n, ...]}) per client.

    Raises:
      ImportError: if h5py is not installed.
      FileNotFoundError: if `path` does not exist.
      KeyError: if the file has no `examples` group, a requested client is
        absent (raised before the first client), or a client lacks a feature
        (raised when that client is reached).

    Example:
      >>> for client_id, features in iter_tff_h5_clients("emnist_train.h5"):  # doctest: +SKIP
      ...     print(client_id, features["pixels"].shape)
    """
    h5py = _import_h5py()
    path = _existing_path(path)
    # Check the layout and the requested ids now, not at the first next().
    with h5py.File(path, "r") as f:
        examples = _examples_group(f, path)
        if client_ids is not None:
            missing = [c for c in client_ids if c not in examples]
            if missing:
                raise KeyError(
                    f"Clients {missing[:5]!r} ({len(missing)} in all) are not in {path}; "
                    f"its first clients are {list(itertools.islice(examples, 5))!r}."
                )
    return _iter_h5(h5py, path, client_ids, features)


def load_tff_h5(
    path: str | os.PathLike,
    x_key: str = "pixels",
    y_key: str = "label",
    preprocess: Preprocess | None = None,
    client_ids: Sequence[str] | None = None,
    max_clients: int | None = None,
) -> FederatedData:
    """Loads a TFF HDF5 client-data file, streaming it client by client.

    Without `preprocess`, each client becomes `{'x': features[x_key], 'y':
    features[y_key]}` as stored. With it, `preprocess` receives every feature
    of the client (`{feature: array}`) and returns `{'x': ..., 'y': ...}`;
    `x_key` and `y_key` are then unused.

    Args:
      path: the .h5 file (layout in `iter_tff_h5_clients`).
      x_key: feature used as x when `preprocess` is None.
      y_key: feature used as y when `preprocess` is None.
      preprocess: optional `client_dict -> {'x': [n, ...], 'y': [n, ...]}`, e.g.
        `emnist_preprocess` or `shakespeare_preprocess`.
      client_ids: clients to load, in this order; default all, in file order.
      max_clients: load at most this many clients (the first ones).

    Returns:
      FederatedData whose client ids are the file's client ids.

    Raises:
      ImportError, FileNotFoundError, KeyError: as `iter_tff_h5_clients`.
      ValueError: if `max_clients` < 1 or `preprocess` returns no 'x' or 'y'.

    Example:
      >>> train = load_tff_h5("fed_emnist_train.h5", preprocess=emnist_preprocess,
      ...                     max_clients=100)  # doctest: +SKIP
      >>> text = load_tff_h5("shakespeare_train.h5",
      ...                    preprocess=shakespeare_preprocess)  # doctest: +SKIP
    """
    if max_clients is not None and not max_clients >= 1:
        raise ValueError(f"max_clients must be >= 1 or None, got {max_clients!r}.")
    features = None if preprocess is not None else (x_key, y_key)
    clients = iter_tff_h5_clients(path, client_ids=client_ids, features=features)
    return _collect(itertools.islice(clients, max_clients), preprocess, _xy(x_key, y_key), path)


def _iter_h5(h5py, path, client_ids, features):
    with h5py.File(path, "r") as f:
        examples = f["examples"]
        for client_id in client_ids if client_ids is not None else examples:
            group = examples[client_id]
            names = list(features) if features is not None else list(group)
            missing = [name for name in names if name not in group]
            if missing:
                raise KeyError(
                    f"Client {client_id!r} in {path} has no feature {missing[0]!r}; its "
                    f"features are {sorted(group)!r}. Pass x_key/y_key (or features) "
                    "naming those, or a preprocess function."
                )
            yield client_id, {name: group[name][()] for name in names}


def _examples_group(f, path):
    if "examples" not in f:
        raise KeyError(
            f"{path} has no 'examples' group, so it is not in TFF's client-data layout "
            f"(examples/<client_id>/<feature>); its top-level keys are {sorted(f)!r}."
        )
    return f["examples"]


def _import_h5py():
    try:
        import h5py
    except ImportError as error:
        raise ImportError(
            "Reading TFF HDF5 files needs h5py, which is not installed: pip install h5py"
        ) from error
    return h5py


# ----------------------------------------------------------------------------- LEAF JSON


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
    return _collect(iter_leaf_json_clients(path_or_dir), preprocess, _leaf_arrays, path_or_dir)


def _leaf_files(path_or_dir) -> list[str]:
    path = _existing_path(path_or_dir)
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


# ----------------------------------------------------------------------------- preprocessing


def emnist_preprocess(client: ClientDict) -> ClientDict:
    """Maps a TFF EMNIST client to Keras-ready arrays, pixels in [0, 1] whatever their dtype.

    TFF's EMNIST files store float32 pixels in [0, 1]; other copies of the data
    store uint8 pixels in 0..255. Pixels are scaled by their dtype, so clients of
    both kinds can share a population: uint8 is divided by 255, floats are kept
    (and must lie in [0, 1]). Other integer dtypes are refused: from the dtype
    alone, 0..1 and 0..255 cannot be told apart, so cast them first.

    Args:
      client: `{'pixels': [n, 28, 28] (or LEAF's [n, 784]) float in [0, 1] or
        uint8 in 0..255, 'label': [n] int, ...}`.

    Returns:
      `{'x': [n, 28, 28, 1] float32 in [0, 1], 'y': [n] int32}`.

    Raises:
      KeyError: the client has no 'pixels' or 'label' feature.
      ValueError: pixels of another shape, of an integer dtype other than uint8
        or floats outside [0, 1], or not as many labels as images.

    Example:
      >>> import numpy as np
      >>> out = emnist_preprocess({"pixels": np.zeros((2, 28, 28)), "label": np.array([3, 7])})
      >>> out["x"].shape, out["y"].dtype
      ((2, 28, 28, 1), dtype('int32'))
      >>> emnist_preprocess({"pixels": np.full((1, 28, 28), 255, np.uint8),
      ...                    "label": np.array([0])})["x"].max()
      1.0
    """
    for key in ("pixels", "label"):
        if key not in client:
            raise KeyError(
                f"emnist_preprocess needs TFF EMNIST's {key!r} feature; the client has "
                f"{sorted(client)!r}."
            )
    pixels, labels = np.asarray(client["pixels"]), np.asarray(client["label"])
    if pixels.shape[1:] not in ((28, 28), (784,)):
        raise ValueError(
            f"emnist_preprocess: pixels of shape {list(pixels.shape)}; expected [n, 28, 28] "
            "(or [n, 784])."
        )
    if len(labels) != len(pixels):
        raise ValueError(
            f"emnist_preprocess: {len(pixels)} images but {len(labels)} labels; expected one "
            "label per image."
        )
    if pixels.dtype == np.uint8:
        x = pixels.astype(np.float32) / np.float32(255)
    elif pixels.dtype.kind == "f":
        x = pixels.astype(np.float32)
        if x.size and not (x.min() >= 0 and x.max() <= 1):
            raise ValueError(
                f"emnist_preprocess: float pixels must lie in [0, 1] (TFF's EMNIST); these "
                f"range from {x.min()} to {x.max()}. Store 0..255 pixels as uint8, or divide "
                "them by 255."
            )
    else:
        raise ValueError(
            f"emnist_preprocess: {pixels.dtype} pixels are ambiguous (0..1 or 0..255?); "
            "expected float pixels in [0, 1] or uint8 pixels in 0..255: cast them to one."
        )
    return {"x": x.reshape(len(x), 28, 28, 1), "y": labels.astype(np.int32)}


def shakespeare_char_ids(
    snippets: Iterable[str | bytes], seq_len: int = 80
) -> tuple[np.ndarray, np.ndarray]:
    """Next-character sequences from text snippets, as TFF's Shakespeare baseline.

    Each snippet is split into bytes and mapped to ids: 0 is padding,
    1..86 the characters of `SHAKESPEARE_CHAR_VOCAB` (character i has id i + 1),
    87 out of vocabulary (any other byte), 88 beginning and 89 end of snippet
    (`SHAKESPEARE_VOCAB_SIZE` = 90 ids). The ids `[88, chars..., 89]` are padded
    with 0 to a multiple of seq_len + 1 and cut into rows of seq_len + 1; x is
    each row without its last id, y without its first. Rows never span two
    snippets. Pad positions (id 0) drop out of the loss and metrics when the model's
    first layer is ``keras.layers.Embedding(..., mask_zero=True)``.

    Args:
      snippets: n strings or UTF-8 bytes (TFF's `snippets` feature).
      seq_len: length L of each sequence (80 in McMahan et al. 2017).

    Returns:
      (x [M, L] int32, y [M, L] int32): inputs and next-character targets.

    Example:
      >>> x, y = shakespeare_char_ids(["To be"], seq_len=4)  # T=12 o=24 ' '=14 b=42 e=65
      >>> x.tolist()
      [[88, 12, 24, 14], [65, 89, 0, 0]]
      >>> y.tolist()
      [[12, 24, 14, 42], [89, 0, 0, 0]]
    """
    if not (isinstance(seq_len, (int, np.integer)) and seq_len >= 1):
        raise ValueError(f"seq_len must be an integer >= 1, got {seq_len!r}.")
    encoded = [s.encode("utf-8") if isinstance(s, str) else bytes(s) for s in snippets]
    row = seq_len + 1
    num_chars = np.array([len(b) for b in encoded], np.int64)
    padded = -(-(num_chars + 2) // row) * row
    starts = np.cumsum(padded) - padded
    tokens = np.zeros(int(padded.sum()), np.int32)
    tokens[starts] = _BOS
    tokens[starts + num_chars + 1] = _EOS
    char_bytes = np.frombuffer(b"".join(encoded), np.uint8)
    # Position of every character: one after its snippet's BOS, then consecutive.
    first_char = np.cumsum(num_chars) - num_chars
    positions = np.repeat(starts + 1 - first_char, num_chars) + np.arange(len(char_bytes))
    tokens[positions] = _BYTE_TO_ID[char_bytes]
    rows = tokens.reshape(-1, row)
    return rows[:, :-1].copy(), rows[:, 1:].copy()


def shakespeare_preprocess(client: ClientDict, seq_len: int = 80) -> ClientDict:
    """Maps a TFF Shakespeare client (`{'snippets': [n] bytes}`) to next-character data.

    Args:
      client: the client's features; only `snippets` is used.
      seq_len: sequence length L (use `functools.partial` to change it).

    Returns:
      `{'x': [M, L] int32, 'y': [M, L] int32}` as `shakespeare_char_ids`.
    """
    if "snippets" not in client:
        raise KeyError(
            "shakespeare_preprocess needs TFF Shakespeare's 'snippets' feature; the client "
            f"has {sorted(client)!r}."
        )
    x, y = shakespeare_char_ids(client["snippets"], seq_len=seq_len)
    return {"x": x, "y": y}


# ----------------------------------------------------------------------------- shared


def _existing_path(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or directory: {path}")
    return path


def _xy(x_key: str, y_key: str) -> Preprocess:
    return lambda features: {"x": features[x_key], "y": features[y_key]}


def _collect(clients, preprocess, default, source) -> FederatedData:
    """Runs every (id, features) pair through preprocess (or default) into FederatedData.

    Errors name the file (``source``) and the client.
    """
    out = {}
    for client_id, features in clients:
        try:
            example = preprocess(features) if preprocess is not None else default(features)
        except (ValueError, TypeError, KeyError, IndexError) as error:
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            kind = type(error) if type(error) in (ValueError, TypeError, KeyError) else ValueError
            raise kind(f"{os.fspath(source)}: client {client_id!r}: {message}") from error
        if not isinstance(example, dict) or "x" not in example or "y" not in example:
            raise ValueError(
                f"preprocess must return a dict with 'x' and 'y'; for client {client_id!r} "
                f"of {os.fspath(source)} it returned {type(example).__name__} "
                f"{sorted(example) if isinstance(example, dict) else ''}."
            )
        out[client_id] = {"x": example["x"], "y": example["y"]}
    if not out:
        raise ValueError(f"{os.fspath(source)} holds no client.")
    try:
        return FederatedData.from_client_dict(out)
    except (ValueError, TypeError) as error:
        raise type(error)(f"{os.fspath(source)}: {error}") from error
