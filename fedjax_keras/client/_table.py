"""Per-client state of a whole population, as arrays: a pytree that jit, shard and save see.

SCAFFOLD's control variates, FedBN's BatchNorm statistics, personal layers and
error-feedback residuals all need one row per client of the population. The
table holds them as arrays ``[population, ...]`` indexed by the client's
position in its population (`FederatedData.population_positions`), plus a
``seen`` mask: a client never trained reads the ``default`` row. Rows are
gathered and written back inside the compiled chunk programs, so nothing
leaves the device between rounds.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np


@flax.struct.dataclass
class ClientTable:
    """An immutable table of per-client state rows.

    Attributes:
      rows: pytree, leaves [population, ...]: the stored state of every client.
      seen: bool [population]: True for clients whose row was written.
      default: pytree like one row, leaves [...]: the state of a client never seen.

    Example:
      >>> table = ClientTable.create({"c": np.zeros(2, np.float32)}, population_size=3)
      >>> table = table.scatter(np.array([2]), {"c": np.ones((1, 2), np.float32)})
      >>> table.gather(np.array([0, 2]))["c"].tolist(), table.seen_positions().tolist()
      ([[0.0, 0.0], [1.0, 1.0]], [2])
    """

    rows: Any
    seen: jax.Array
    default: Any

    @classmethod
    def create(cls, default: Any, population_size: int) -> "ClientTable":
        """A table of ``population_size`` unseen clients whose state starts at ``default``."""
        default = jax.tree.map(jnp.asarray, default)
        rows = jax.tree.map(lambda d: jnp.zeros((population_size,) + d.shape, d.dtype), default)
        return cls(rows=rows, seen=jnp.zeros((population_size,), bool), default=default)

    @property
    def population_size(self) -> int:
        """Rows of the table (clients of the population)."""
        return int(self.seen.shape[0])

    def with_default(self, default: Any) -> "ClientTable":
        """The same stored rows with a new default row for clients not seen yet."""
        return self.replace(default=jax.tree.map(jnp.asarray, default))

    def seen_positions(self) -> np.ndarray:
        """int64 [seen clients]: population positions with a stored row (host)."""
        return np.flatnonzero(np.asarray(self.seen))

    def gather(self, positions) -> Any:
        """Rows of ``positions`` (int [k]), the default for unseen clients; leaves [k, ...].

        Pure: usable inside jit and vmap.
        """
        positions = jnp.asarray(positions)
        seen = self.seen[positions]

        def pick(table, default):
            taken = table[positions]
            keep = seen.reshape(seen.shape + (1,) * default.ndim)
            return jnp.where(keep, taken, jnp.broadcast_to(default, taken.shape))

        return jax.tree.map(pick, self.rows, self.default)

    def scatter(self, positions, values: Any, write=None) -> "ClientTable":
        """A new table with rows ``positions`` (int [k]) set to ``values`` (leaves [k, ...]).

        Args:
          positions: int [k], population positions.
          values: pytree like `rows`, leaves [k, ...].
          write: bool [k] or None (all): rows with False are left unchanged.
            A position must not be written twice in one call (JAX leaves the
            order of repeated scatter indices unspecified): give False to all
            but one of the repeats.

        Pure: usable inside jit.
        """
        positions = jnp.asarray(positions)
        if write is None:
            write = jnp.ones(positions.shape, bool)
        # Rows not written go to an out-of-range index, which mode="drop" discards.
        target = jnp.where(write, positions, self.population_size)
        rows = jax.tree.map(
            lambda table, new: table.at[target].set(new.astype(table.dtype), mode="drop"),
            self.rows,
            values,
        )
        return self.replace(rows=rows, seen=self.seen.at[target].set(True, mode="drop"))
