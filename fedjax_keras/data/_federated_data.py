"""FederatedData: an immutable container of many clients' examples.

All clients' examples live in one pytree of numpy arrays with a shared leading
dimension N (clients stored contiguously, one after another); `client_offsets`
cuts it into clients. One representation makes sampling, subsetting and
batching single vectorised gathers, with no per-client Python loop.

One job: `FederatedData`, its constructors and views (subsets, samples,
splits) over one private representation (source, starts, ids). The draws are
in `fedjax_keras.data._sampling`, the input checks in `_client_arrays`.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from jax import tree_util

from ._client_arrays import (
    as_leaf_arrays,
    check_ids,
    check_offsets,
    check_positions,
    check_xy_keys,
    common_leading_dim,
    normalise_client,
    read_only,
    take_rows,
)
from ._sampling import poisson_positions, sample_positions, split_rows


class FederatedData:
    """Immutable container of many clients' examples with ragged sizes.

    Attributes:
      examples: ``{'x': x, 'y': y}`` where ``x`` and ``y`` are each a numpy
        array [N, ...] or a dict/list/tuple (nested) of such arrays, all sharing
        the leading dimension N. Arrays are read-only views; no copy is made of
        what the user passed.
      client_offsets: int64 [num_clients + 1]; client ``c`` owns rows
        ``client_offsets[c]:client_offsets[c + 1]``.
      client_ids: tuple of num_clients distinct hashable ids (default 0..C-1).

    Example:
      >>> import numpy as np
      >>> data = FederatedData.from_arrays(
      ...     x=np.arange(10.0).reshape(5, 2), y=np.arange(5), client_offsets=[0, 2, 2, 5],
      ...     client_ids=["a", "b", "c"])
      >>> data.num_clients, data.num_examples, data.client_sizes.tolist()
      (3, 5, [2, 0, 3])
      >>> data.client_by_id("c")["y"].tolist()
      [2, 3, 4]
      >>> cohort = data.sample_clients(2, seed=0)  # default_rng(0).choice(3, 2, replace=False)
      >>> cohort.client_ids
      ('b', 'c')
    """

    def __init__(self, examples: dict, client_offsets: Any, client_ids: Any = None):
        if not isinstance(examples, Mapping):
            raise TypeError(
                f"examples must be a dict {{'x': ..., 'y': ...}}, got {type(examples).__name__}."
            )
        check_xy_keys(examples, "examples")
        x = as_leaf_arrays(examples["x"], "x")
        y = as_leaf_arrays(examples["y"], "y")
        n = common_leading_dim(x, y)
        offsets = check_offsets(client_offsets, n)
        ids = check_ids(client_ids, len(offsets) - 1)
        self._init({"x": x, "y": y}, offsets, ids, None, None)

    def _init(
        self,
        examples,
        client_offsets,
        client_ids,
        source,
        starts,
        population_ids=None,
        population_positions=None,
        population_size=None,
    ) -> None:
        # A subset is a view: it keeps the population's arrays (`source`) and each
        # client's first row there (`starts`), and copies its own rows only when
        # `examples` is read. Batching reads the source directly, so sampling a
        # cohort costs O(clients), not O(examples).
        if source is None:
            source, starts = examples, client_offsets[:-1]
        object.__setattr__(self, "_examples", examples)
        object.__setattr__(self, "client_offsets", client_offsets)
        object.__setattr__(self, "client_ids", client_ids)
        object.__setattr__(self, "_source", source)
        object.__setattr__(self, "_starts", starts)
        object.__setattr__(
            self, "_population_ids", client_ids if population_ids is None else population_ids
        )
        num_clients = len(client_offsets) - 1
        if population_positions is None:
            population_positions = read_only(np.arange(num_clients, dtype=np.int64))
        object.__setattr__(self, "_population_positions", population_positions)
        object.__setattr__(
            self, "_population_size", num_clients if population_size is None else population_size
        )

    def __setattr__(self, name, value):
        raise AttributeError(f"FederatedData is immutable; cannot set {name!r}.")

    @property
    def examples(self) -> dict:
        """``{'x': ..., 'y': ...}``, leaves [N, ...] (read-only)."""
        if self._examples is None:
            rows = np.arange(self.client_offsets[-1], dtype=np.int64)
            rows += np.repeat(self._starts - self.client_offsets[:-1], self.client_sizes)
            object.__setattr__(self, "_examples", take_rows(self._source, rows))
            object.__setattr__(self, "_examples", tree_util.tree_map(read_only, self._examples))
        return self._examples

    @property
    def population_ids(self) -> tuple:
        """Each client's id in the population it was sampled from.

        Equal to `client_ids`, except that in a cohort sampled with replacement
        a repeated client keeps its population id here (in `client_ids` its
        k-th repeat is named ``(id, k)``). Per-client state is kept by these ids.
        """
        return self._population_ids

    @property
    def population_positions(self) -> np.ndarray:
        """int64 [C]: each client's position in the population it was sampled from.

        ``arange(C)`` for data built from arrays or client collections; for a
        subset (a sampled cohort), the positions in the root population, repeats
        included. Per-client state tables are indexed by these positions.
        """
        return self._population_positions

    @property
    def population_size(self) -> int:
        """Clients in the population this data was sampled from (C for a root)."""
        return self._population_size

    @property
    def source_rows(self) -> tuple[dict, np.ndarray]:
        """``(source, starts)``: arrays holding the clients' rows and each client's first row.

        For data built from arrays, ``source`` is `examples` and ``starts`` is
        ``client_offsets[:-1]``; for a subset, ``source`` is the population's
        arrays, so no example is copied. Client ``c`` owns
        ``source[starts[c] : starts[c] + client_sizes[c]]``.
        """
        return self._source, self._starts

    @classmethod
    def _unchecked(cls, examples: dict, client_offsets: np.ndarray, client_ids: tuple):
        """Builds from parts already known valid (subset, split): skips validation."""
        data = object.__new__(cls)
        data._init(
            tree_util.tree_map(read_only, examples),
            read_only(client_offsets),
            client_ids,
            None,
            None,
        )
        return data

    @classmethod
    def _view(
        cls,
        source: dict,
        starts: np.ndarray,
        sizes: np.ndarray,
        client_ids: tuple,
        population_ids: tuple,
        population_positions: np.ndarray,
        population_size: int,
    ):
        data = object.__new__(cls)
        offsets = np.zeros(len(sizes) + 1, np.int64)
        np.cumsum(sizes, out=offsets[1:])
        data._init(
            None,
            read_only(offsets),
            client_ids,
            source,
            read_only(starts),
            population_ids,
            read_only(population_positions),
            population_size,
        )
        return data

    # -- Constructors -------------------------------------------------------------------

    @classmethod
    def from_arrays(
        cls, x: Any, y: Any, client_offsets: Any, client_ids: Sequence[Hashable] | None = None
    ) -> FederatedData:
        """Builds from all clients' examples stored contiguously.

        Args:
          x: inputs, an array [N, ...] or a dict/list/tuple of arrays [N, ...].
          y: targets, an array [N, ...] or a dict/list/tuple of arrays [N, ...].
          client_offsets: int [C + 1], non-decreasing, from 0 to N; client c owns
            rows ``client_offsets[c]:client_offsets[c + 1]``.
          client_ids: C distinct hashable ids; default ``0..C-1``.

        Returns:
          FederatedData with C clients and N examples (no copy of the arrays:
          a process notices changes made to them in place between rounds and
          uses the new values; docs/datasets.md).

        Raises:
          TypeError: if a leaf is not convertible to a numeric array, or the
            offsets are not integers.
          ValueError: if leaves differ in leading dimension, the offsets do not
            cut [0, N], or client_ids has the wrong length or repeats an id.
        """
        return cls({"x": x, "y": y}, client_offsets, client_ids)

    @classmethod
    def from_client_dict(cls, clients: Mapping[Hashable, Any]) -> FederatedData:
        """Builds from ``{client_id: {'x': x_c, 'y': y_c}}`` or ``{client_id: (x_c, y_c)}``.

        Client ids keep the dict's order. Every client must have the same pytree
        structure and the same per-example shapes (the examples are concatenated).

        Args:
          clients: non-empty mapping from client id to that client's examples.

        Returns:
          FederatedData holding the clients in the mapping's order.

        Raises:
          TypeError / ValueError: as `from_arrays`, plus mismatched structures
            between clients (the message names the client).
        """
        if not isinstance(clients, Mapping):
            raise TypeError(f"clients must be a dict {{client_id: examples}}, got {type(clients)}.")
        return cls._from_clients(list(clients.keys()), list(clients.values()), "clients")

    @classmethod
    def from_client_list(cls, clients: Sequence[Any]) -> FederatedData:
        """Builds from ``[{'x': x_c, 'y': y_c} or (x_c, y_c), ...]``; ids are 0..n-1.

        Args:
          clients: non-empty sequence of the clients' examples.

        Returns:
          FederatedData holding the clients in list order.

        Raises:
          TypeError / ValueError: as `from_client_dict`.
        """
        if isinstance(clients, (Mapping, str, bytes)) or not isinstance(clients, Sequence):
            raise TypeError(
                f"clients must be a list of {{'x': ..., 'y': ...}} or (x, y), got {type(clients)}."
            )
        return cls._from_clients(list(range(len(clients))), list(clients), "clients")

    @classmethod
    def _from_clients(cls, ids: list, per_client: list, name: str) -> FederatedData:
        if not per_client:
            raise ValueError(f"{name} must hold at least one client, got an empty collection.")
        trees, sizes = [], []
        for client_id, examples in zip(ids, per_client):
            what = f"{name}[{client_id!r}]"
            examples = normalise_client(examples, what)
            x = as_leaf_arrays(examples["x"], f"{what}['x']")
            y = as_leaf_arrays(examples["y"], f"{what}['y']")
            sizes.append(common_leading_dim(x, y, what))
            trees.append({"x": x, "y": y})
        first = trees[0]
        first_def = tree_util.tree_structure(first)
        first_shapes = [leaf.shape[1:] for leaf in tree_util.tree_leaves(first)]
        for client_id, tree in zip(ids, trees):
            shapes = [leaf.shape[1:] for leaf in tree_util.tree_leaves(tree)]
            if tree_util.tree_structure(tree) != first_def or shapes != first_shapes:
                raise ValueError(
                    f"{name}[{client_id!r}] has structure {tree_util.tree_structure(tree)} with "
                    f"per-example shapes {shapes}, but {name}[{ids[0]!r}] has {first_def} with "
                    f"{first_shapes}; every client needs the same structure and shapes."
                )
        examples = tree_util.tree_map(lambda *leaves: np.concatenate(leaves), *trees)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        return cls(examples, offsets, tuple(ids))

    # -- Properties ---------------------------------------------------------------------

    @property
    def num_clients(self) -> int:
        """Number of clients C."""
        return len(self.client_offsets) - 1

    @functools.cached_property
    def client_sizes(self) -> np.ndarray:
        """int64 [C]: examples per client."""
        return read_only(np.diff(self.client_offsets))

    @property
    def num_examples(self) -> int:
        """Total examples N over all clients."""
        return int(self.client_offsets[-1])

    @functools.cached_property
    def _position_by_id(self) -> dict:
        return {client_id: i for i, client_id in enumerate(self.client_ids)}

    @functools.cached_property
    def _id_array(self) -> np.ndarray:
        return np.fromiter(self.client_ids, dtype=object, count=self.num_clients)

    def __len__(self) -> int:
        return self.num_clients

    def __iter__(self) -> Iterator[tuple[Hashable, dict]]:
        """Yields ``(client_id, {'x': ..., 'y': ...})`` for every client, in order."""
        for position, client_id in enumerate(self.client_ids):
            yield client_id, self.client(position)

    def __repr__(self) -> str:
        def spec(tree):
            return tree_util.tree_map(lambda a: f"{a.dtype}{list(a.shape[1:])}", tree)

        return (
            f"FederatedData(num_clients={self.num_clients}, num_examples={self.num_examples}, "
            f"x={spec(self.examples['x'])}, y={spec(self.examples['y'])})"
        )

    # -- Access -------------------------------------------------------------------------

    def client(self, position: int) -> dict:
        """Returns client ``position``'s examples ``{'x': [n_c, ...], 'y': [n_c, ...]}`` (views).

        Raises:
          IndexError: if position is not in [-C, C).
        """
        c = self.num_clients
        p = operator.index(position)
        if not -c <= p < c:
            raise IndexError(f"position must be in [-{c}, {c}) for {c} clients, got {position!r}.")
        p %= c
        start = int(self._starts[p])
        stop = start + int(self.client_offsets[p + 1] - self.client_offsets[p])
        return tree_util.tree_map(lambda a: a[start:stop], self._source)

    def client_by_id(self, client_id: Hashable) -> dict:
        """Returns the examples of the client named ``client_id`` (views).

        Raises:
          KeyError: if no client has that id.
        """
        try:
            position = self._position_by_id[client_id]
        except KeyError:
            shown = ", ".join(repr(i) for i in self.client_ids[:5])
            more = ", ..." if self.num_clients > 5 else ""
            raise KeyError(f"client_id {client_id!r} not found; ids are ({shown}{more}).") from None
        return self.client(position)

    # -- Subsets, sampling, splits ------------------------------------------------------

    def subset(self, positions: Any) -> FederatedData:
        """Returns the clients at ``positions``, in that order, as a new FederatedData.

        Positions may repeat (sampling with replacement): each occurrence is a
        separate copy of the client. Client ids must stay distinct, so the k-th
        repeat (k >= 1) of a client named ``i`` is named ``(i, k)``.

        Args:
          positions: int [K], each in [0, C).

        Returns:
          FederatedData with K clients: a view on this data's arrays (no example is
          copied until its `examples` are read).

        Raises:
          TypeError: if positions are not integers.
          ValueError: if positions is not 1-D or a position is out of range.
        """
        pos = check_positions(positions, self.num_clients)
        population = self._population_ids
        return FederatedData._view(
            self._source,
            self._starts[pos],
            self.client_sizes[pos],
            self._subset_ids(pos),
            tuple(population[p] for p in pos.tolist()),
            self._population_positions[pos],
            self._population_size,
        )

    def _subset_ids(self, pos: np.ndarray) -> tuple:
        ids = self._id_array[pos]
        if len(pos) > 1:
            # Occurrence number of each position among equal positions.
            order = np.argsort(pos, kind="stable")
            sorted_pos = pos[order]
            starts = np.flatnonzero(np.r_[True, sorted_pos[1:] != sorted_pos[:-1]])
            counts = np.diff(np.r_[starts, len(pos)])
            occurrence = np.empty(len(pos), np.int64)
            occurrence[order] = np.arange(len(pos)) - np.repeat(starts, counts)
            for i in np.flatnonzero(occurrence):
                ids[i] = (ids[i], int(occurrence[i]))
        return tuple(ids.tolist())

    def sample_client_positions(
        self, num_clients: int, seed: Any, replace: bool | None = None
    ) -> np.ndarray:
        """Positions of a seeded cohort: ``default_rng(seed).choice(C, num_clients, replace)``.

        Exactly that numpy call, so that benchmark protocols can reproduce cohorts.

        Args:
          num_clients: cohort size K >= 0.
          seed: anything `numpy.random.default_rng` accepts (e.g. the round number).
          replace: sample with replacement; None means only when K > C.

        Returns:
          int64 [K] positions in [0, C).

        Raises:
          ValueError: if K < 0, C == 0 < K, or K > C with replace=False.
        """
        return sample_positions(self.num_clients, num_clients, seed, replace)

    def sample_clients(
        self, num_clients: int, seed: Any, replace: bool | None = None
    ) -> FederatedData:
        """A seeded cohort: ``self.subset(self.sample_client_positions(...))``.

        See `sample_client_positions` for the arguments and `subset` for how
        repeated draws are named.
        """
        return self.subset(self.sample_client_positions(num_clients, seed, replace))

    def sample_client_positions_poisson(self, probability: float, seed: Any) -> np.ndarray:
        """Positions of a Poisson-sampled cohort: each client joins with ``probability``.

        ``flatnonzero(default_rng(seed).random(C) < probability)``: independent
        draws, so the cohort's size varies (binomial, mean ``probability * C``)
        and may be 0. Differential-privacy accountants for sampled Gaussian
        mechanisms (`fedjax_keras.privacy`) assume this sampling.

        Args:
          probability: in [0, 1].
          seed: anything `numpy.random.default_rng` accepts (e.g. the round number).

        Returns:
          int64 [K] increasing positions in [0, C).

        Raises:
          ValueError: if probability is not a number in [0, 1].
        """
        return poisson_positions(self.num_clients, probability, seed)

    def sample_clients_poisson(self, probability: float, seed: Any) -> FederatedData:
        """A Poisson-sampled cohort: ``self.subset(self.sample_client_positions_poisson(...))``.

        The cohort's size varies from round to round: give the process a fixed
        ``chunk_size`` (e.g. ``chunk_size=16``) so that every chunk has one
        shape and rounds after the first few compile nothing. An empty cohort
        (probability ``(1 - probability) ** C``) cannot run a round: skip it.

        Example:
          >>> cohort = data.sample_clients_poisson(0.1, seed=round_num)
        """
        return self.subset(self.sample_client_positions_poisson(probability, seed))

    def train_test_split(
        self, test_fraction: float, seed: Any
    ) -> tuple[FederatedData, FederatedData]:
        """Splits every client's examples into a train and a test part.

        Client c puts ``floor(test_fraction * n_c)`` randomly chosen examples in
        test and keeps the other ``n_c - floor(test_fraction * n_c)`` (the
        ceiling of its share) in train, so a client with one example keeps it for
        training. Both parts have all C clients and ids (a test client may be
        empty) and keep each client's examples in their original relative order.

        Args:
          test_fraction: in (0, 1).
          seed: anything `numpy.random.default_rng` accepts.

        Returns:
          (train, test) FederatedData; together they hold every example once.

        Raises:
          ValueError: if test_fraction is not in (0, 1).
        """
        parts = []
        for rows, part_sizes in split_rows(self.client_sizes, test_fraction, seed):
            offsets = np.concatenate([[0], np.cumsum(part_sizes)]).astype(np.int64)
            examples = take_rows(self.examples, rows)
            parts.append(FederatedData._unchecked(examples, offsets, self.client_ids))
        return parts[0], parts[1]
