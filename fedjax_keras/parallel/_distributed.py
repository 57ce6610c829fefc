"""Several processes (hosts) as one run, on JAX's own distributed runtime.

Every process runs the same script: it samples the same cohort from the
seed, builds the chunks' arrays only for its own devices' clients, and the
compiled programs reduce the aggregate across all devices of all processes.
"""

import os

import jax

COORDINATOR_ENV = "FEDJAX_KERAS_COORDINATOR"
NUM_PROCESSES_ENV = "FEDJAX_KERAS_NUM_PROCESSES"
PROCESS_ID_ENV = "FEDJAX_KERAS_PROCESS_ID"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    **kwargs,
) -> None:
    """Joins a multi-process run: `jax.distributed.initialize` with CPU collectives.

    Call it first thing, before any JAX computation, in every process. The
    arguments come from the call, else from the environment variables
    ``FEDJAX_KERAS_COORDINATOR`` (``host:port`` of process 0),
    ``FEDJAX_KERAS_NUM_PROCESSES`` and ``FEDJAX_KERAS_PROCESS_ID`` (what
    ``fedjax-keras launch`` sets), else JAX's own cluster detection (SLURM,
    TPU pods, Open MPI...). On CPUs the collectives run over gloo.

    Args:
      coordinator_address: ``'host:port'`` of process 0.
      num_processes: processes in the run.
      process_id: this process's index in ``[0, num_processes)``.
      **kwargs: passed on to `jax.distributed.initialize` (``local_device_ids``, ...).

    Example:
      >>> fedjax_keras.parallel.initialize(  # doctest: +SKIP
      ...     "10.0.0.1:1234", num_processes=2, process_id=0)
    """
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV)
    if num_processes is None and NUM_PROCESSES_ENV in os.environ:
        num_processes = int(os.environ[NUM_PROCESSES_ENV])
    if process_id is None and PROCESS_ID_ENV in os.environ:
        process_id = int(os.environ[PROCESS_ID_ENV])
    # CPU devices of several processes talk over gloo; without it a CPU run
    # cannot reduce across processes. It must be set before the backend starts.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        **kwargs,
    )


def process_index() -> int:
    """This process's index (0 in a single-process run)."""
    return jax.process_index()


def process_count() -> int:
    """Processes in the run (1 unless `initialize` joined several)."""
    return jax.process_count()
