"""Running ``fedjax-keras simulate`` as several processes: roles and agreement.

Every process of a multi-process run executes the same rounds; process 0 (the
primary) alone writes the run directory, the metrics, the plots and the
checkpoints, and restores a resumed run's checkpoint, which it then
broadcasts. Decisions that would otherwise differ between processes (a
Ctrl-C seen by one of them) are agreed on after every round, so no process
waits forever in a collective the others never reach. ``fedjax-keras launch``,
which starts the processes of a local run, is `fedjax_keras.cli.launcher`.
"""

import os

from fedjax_keras.parallel import NUM_PROCESSES_ENV

# Set to 1 to join a cluster JAX detects by itself (SLURM, TPU pods, Open MPI).
DETECT_ENV = "FEDJAX_KERAS_DISTRIBUTED"


def join_if_launched() -> bool:
    """Joins the multi-process run described by the environment; True if there is one."""
    detect = os.environ.get(DETECT_ENV, "0") not in ("", "0")
    if int(os.environ.get(NUM_PROCESSES_ENV, "1")) <= 1 and not detect:
        return False
    from fedjax_keras import parallel

    parallel.initialize()
    return True


def is_primary() -> bool:
    import jax

    return jax.process_index() == 0


def any_process(flag: bool) -> bool:
    """True on every process if ``flag`` is True on any (a no-op with one process)."""
    import jax

    if jax.process_count() == 1:
        return flag
    import numpy as np
    from jax.experimental import multihost_utils

    return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def barrier(name: str) -> None:
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def broadcast_from_primary(tree):
    """Process 0's ``tree`` (numpy leaves) on every process."""
    import jax

    if jax.process_count() == 1:
        return tree
    import numpy as np
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    host = [np.asarray(leaf) for leaf in leaves]
    return jax.tree.unflatten(treedef, list(multihost_utils.broadcast_one_to_all(host)))


class NullRun:
    """What the non-primary processes hold instead of a `RunDir`: nothing is written."""

    def __init__(self, path: str):
        self.path = path
        self.rows: list = []
        self.checkpoints = os.path.join(path, "checkpoints")

    def write_config(self, config) -> None:
        pass

    def load_rows(self, up_to_round: int) -> None:
        pass

    def log_to_tensorboard(self, log_dir: str) -> None:
        pass

    def append(self, row: dict) -> None:
        pass

    def plot(self, title: str) -> None:
        pass

    def release(self) -> None:
        pass
