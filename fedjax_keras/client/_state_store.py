"""Per-client state that outlives a round, keyed by client id.

SCAFFOLD's control variates, FedBN's BatchNorm statistics and personal layers
all need a row per client of the population. Rows are gathered for a cohort
before its compiled step and scattered back after it; unseen clients start
from a default row. The table lives on the device (``placement='device'``),
where it fits, or in host memory (``'host'``) for large populations.
"""

from collections.abc import Hashable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


class ClientStateStore:
    """An immutable table of per-client state rows.

    Args:
      default: pytree of arrays, the state of a client never seen before.
      placement: ``'device'`` (jax arrays) or ``'host'`` (numpy arrays).

    `scatter` returns a new store; the old one stays valid (host tables are
    copied, device tables use functional ``.at[].set``).
    """

    def __init__(self, default: Any, placement: str = "device", _rows=None, _table=None):
        if placement not in ("device", "host"):
            raise ValueError(f"placement must be 'device' or 'host'; received {placement!r}.")
        self.placement = placement
        self.default = jax.tree.map(np.asarray, default)
        self._rows: dict[Hashable, int] = dict(_rows or {})
        xp = jnp if placement == "device" else np
        if _table is None:
            _table = jax.tree.map(lambda d: xp.zeros((0,) + d.shape, d.dtype), self.default)
        self._table = _table

    def __len__(self) -> int:
        """Number of clients with a stored row."""
        return len(self._rows)

    @property
    def client_ids(self) -> list:
        return list(self._rows)

    def _xp(self):
        return jnp if self.placement == "device" else np

    def with_default(self, default: Any) -> "ClientStateStore":
        """The same stored rows with a new default row for clients not seen yet."""
        return ClientStateStore(default, self.placement, self._rows, self._table)

    def gather(self, client_ids: Sequence[Hashable]) -> Any:
        """Rows for ``client_ids`` (defaults for unseen ones), leaves [len(ids), ...]."""
        rows = np.array([self._rows.get(cid, -1) for cid in client_ids], np.int64)
        xp = self._xp()
        seen = rows >= 0

        def pick(table, default):
            if len(rows) == 0:
                return xp.zeros((0,) + default.shape, default.dtype)
            taken = table[xp.asarray(np.where(seen, rows, 0))] if table.shape[0] else None
            fill = xp.broadcast_to(xp.asarray(default), (len(rows),) + default.shape)
            if taken is None:
                return fill
            mask = xp.asarray(seen).reshape((-1,) + (1,) * default.ndim)
            return xp.where(mask, taken, fill)

        return jax.tree.map(pick, self._table, self.default)

    def scatter(self, client_ids: Sequence[Hashable], values: Any) -> "ClientStateStore":
        """A new store with the rows of ``client_ids`` set to ``values`` [len(ids), ...].

        When an id appears twice (sampling with replacement), the last value wins.
        """
        rows = dict(self._rows)
        indices = []
        for cid in client_ids:
            if cid not in rows:
                rows[cid] = len(rows)
            indices.append(rows[cid])
        size = len(rows)
        xp = self._xp()
        index = np.asarray(indices, np.int64)
        # An id given twice keeps its last value: JAX leaves the order of updates to
        # a repeated index unspecified (GPUs apply them in any order), so drop the
        # earlier ones on the host.
        _, from_end = np.unique(index[::-1], return_index=True)
        last = None if len(from_end) == len(index) else np.sort(len(index) - 1 - from_end)

        def put(table, new):
            grown = table
            if size > table.shape[0]:
                capacity = max(size, 2 * table.shape[0], 8)
                pad = xp.zeros((capacity - table.shape[0],) + table.shape[1:], table.dtype)
                grown = xp.concatenate([table, pad])
            rows_at, new_rows = index, new
            if last is not None:
                rows_at, new_rows = index[last], xp.asarray(new)[last]
            if xp is np:
                grown = grown.copy() if grown is table else grown
                grown[rows_at] = np.asarray(new_rows)
                return grown
            return grown.at[rows_at].set(jnp.asarray(new_rows))

        table = jax.tree.map(put, self._table, values)
        return ClientStateStore(self.default, self.placement, rows, table)
