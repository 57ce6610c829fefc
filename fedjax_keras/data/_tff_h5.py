"""TFF HDF5 files (``tff.simulation.datasets``' on-disk format) -> federated data.

h5py is needed for these functions only and is imported when they are called.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator, Sequence

import numpy as np

from fedjax_keras.data._federated_data import FederatedData
from fedjax_keras.data._loaders import Preprocess, collect, existing_path, xy


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
    path = existing_path(path)
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
    return collect(itertools.islice(clients, max_clients), preprocess, xy(x_key, y_key), path)


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
