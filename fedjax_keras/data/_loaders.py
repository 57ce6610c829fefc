"""What the loaders of federated data sets on disk share: the preprocess hook, paths, collection.

The formats have one module each: `fedjax_keras.data._tff_h5` (TFF HDF5) and
`fedjax_keras.data._leaf_json` (LEAF JSON); the hooks for the common TFF data
sets are in `fedjax_keras.data._preprocess`. Both formats are read client by
client (`iter_tff_h5_clients`, `iter_leaf_json_clients`: generators that hold
one client or one file in memory at a time), and `load_tff_h5` /
`load_leaf_json` build a `FederatedData` from them with `collect`, passing each
client through an optional ``preprocess(client_dict) -> {'x': ..., 'y': ...}``
hook.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from fedjax_keras.data._federated_data import FederatedData

ClientDict = dict[str, Any]
Preprocess = Callable[[ClientDict], ClientDict]


def existing_path(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file or directory: {path}")
    return path


def xy(x_key: str, y_key: str) -> Preprocess:
    return lambda features: {"x": features[x_key], "y": features[y_key]}


def collect(clients, preprocess, default, source) -> FederatedData:
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
