"""Placing a round's arrays on a device mesh: clients sharded, everything else replicated.

A round runs on a `jax.sharding.Mesh` with a ``'clients'`` axis. The clients
axis of every chunk is split over that axis's devices; the server's weights,
the aggregator's sums and the client table are replicated, and the compiled
programs reduce the chunk's contributions across devices themselves (XLA
inserts the all-reduce). On several processes (`fedjax_keras.parallel.initialize`)
the mesh spans every process's devices and each process transfers only the
shards of its own devices.

On a single device nothing is sharded: numpy arrays go to the compiled
programs as they are, the fastest path for small rounds.
"""

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

CLIENTS = "clients"


def default_mesh() -> Mesh:
    """A 1-D mesh over every device of every process, axis ``'clients'``."""
    return Mesh(np.array(jax.devices()), (CLIENTS,))


def check_mesh(mesh) -> Mesh:
    """Returns ``mesh`` (None: `default_mesh`) if it has a ``'clients'`` axis, else raises."""
    if mesh is None:
        return default_mesh()
    if not isinstance(mesh, Mesh):
        raise TypeError(
            f"mesh must be a jax.sharding.Mesh with a {CLIENTS!r} axis (or None for every "
            f"device); received {mesh!r}."
        )
    if CLIENTS not in mesh.axis_names:
        raise ValueError(
            f"mesh must have a {CLIENTS!r} axis to shard clients over; its axes are "
            f"{mesh.axis_names}. Build it as jax.sharding.Mesh(devices, ('clients',))."
        )
    return mesh


class Placement:
    """Puts chunk arrays (sharded over clients) and round arrays (replicated) on a mesh.

    Args:
      mesh: a mesh with a ``'clients'`` axis, or None for every device.
    """

    def __init__(self, mesh: Mesh | None = None):
        self.mesh = check_mesh(mesh)
        self.num_devices = int(self.mesh.shape[CLIENTS])
        self.single_device = self.mesh.devices.size == 1
        self.clients_sharding = NamedSharding(self.mesh, PartitionSpec(CLIENTS))
        self.replicated_sharding = NamedSharding(self.mesh, PartitionSpec())

    def __repr__(self) -> str:
        return f"Placement({self.num_devices} devices on the {CLIENTS!r} axis)"

    def clients(self, tree: Any) -> Any:
        """Host arrays [clients, ...] -> arrays sharded over the clients axis."""
        if self.single_device:
            return tree
        return jax.tree.map(lambda a: _from_host(a, self.clients_sharding), tree)

    def replicated(self, tree: Any) -> Any:
        """Host or device arrays -> arrays replicated on every device of the mesh."""
        if self.single_device:
            return tree
        return jax.tree.map(lambda a: _from_host(a, self.replicated_sharding), tree)

    def jit(self, fn, *, replicated_outputs: bool = True, **kwargs):
        """`jax.jit` whose outputs are replicated over the mesh (unless told otherwise)."""
        if self.single_device or not replicated_outputs:
            return jax.jit(fn, **kwargs)
        return jax.jit(fn, out_shardings=self.replicated_sharding, **kwargs)


def _from_host(array, sharding: NamedSharding):
    if isinstance(array, jax.Array):
        if array.sharding == sharding:
            return array
        if jax.process_count() == 1:
            return jax.device_put(array, sharding)
    host = np.asarray(array)
    # Each process builds only the shards of its own devices (the callback runs
    # for addressable shards only), so this also works across processes.
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
