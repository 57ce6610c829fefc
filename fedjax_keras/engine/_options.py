"""The engine options every builder accepts, checked once at build time."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from fedjax_keras._numbers import is_integer
from fedjax_keras.data import UnreliableClients, bucket
from fedjax_keras.parallel import Stepwise, Vmap, check_mesh

RUNNERS = ("auto", "timed", "vmap", "unroll", "sequential")
DATA_PLACEMENTS = ("auto", "device", "host")
# Above this many trainable tensors a convolutional model's 'auto' runner on a
# CPU is 'sequential', untimed: keras.applications' nets have 200-320 (the
# benchmark protocols' CNNs 6-8), and timing would compile two large programs.
AUTO_TIMING_MAX_TENSORS = 64


def is_positive_int(value) -> bool:
    return is_integer(value) and value >= 1


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """How a process batches and runs its clients; the numbers do not depend on them
    (beyond float tolerance) except ``batch_size``, ``epochs`` and ``shuffle``.

    Attributes:
      batch_size: examples per local step (20).
      epochs: local epochs per round (1).
      shuffle: shuffle each client's data every epoch, seeded by the state's
        seed and round (True).
      chunk_size: clients run together in one compiled call ('auto'): a
        positive int; 'auto' (a sixteenth of the cohort, at least 16 and at most
        512 on a CPU, at least 512 and at most 4096 on accelerators, never more
        than the cohort: a pure function of the cohort size); or None (the
        whole cohort at once). Rounded up to a multiple of the mesh's devices.
        Peak memory grows with it, not with the cohort.
      step_buckets: how a chunk's step count is rounded up ('geometric': 1, 2,
        3, 4, 6, 8, 12, ...; 'pow2'; 'exact'; or an increasing list).
      runner: how chunks run: an executor (`fedjax_keras.parallel.Vmap`,
        `fedjax_keras.parallel.Stepwise`) or a name: 'vmap', 'sequential'
        (``Stepwise(1)``), 'unroll' (``Stepwise(group_size)``), 'auto' ('vmap',
        except for convolutions on a CPU, where the cheaper of 'sequential'
        and 'unroll' is measured on the first chunk, once) or 'timed' (always
        measure the candidates). The choice is made once per process and
        agreed on by every process of a multi-process run.
      group_size: clients per device in one step of 'unroll' (2).
      data_placement: 'device' keeps the population's arrays on the devices
        (transferred once) and moves only row indices per round; 'host'
        builds every chunk's batches in host memory; 'auto' (default) keeps
        populations up to ``device_data_limit`` bytes on the devices.
      device_data_limit: bytes (None: 256 MiB on a CPU, 4 GiB elsewhere).
      population_size: clients of the population, the rows of the client
        table of stateful algorithms (None: the first cohort's population).
      mesh: a `jax.sharding.Mesh` with a 'clients' axis (None: every device).
      max_nonfinite_rounds: consecutive rounds whose server update is not
        finite (never applied) before `next` raises (1: at once).
      unreliable_clients: a `fedjax_keras.data.UnreliableClients` (dropouts,
        stragglers drawn per round from the seed), or None.
      host_metrics: functions ``(state, metrics) -> dict`` run on the host
        after every round, their results added to the round's metrics (a
        privacy accountant's ``epsilon``, say); ``()`` for none.
    """

    batch_size: int = 20
    epochs: int = 1
    shuffle: bool = True
    chunk_size: Any = "auto"
    step_buckets: str | Sequence[int] = "geometric"
    runner: Any = "auto"
    group_size: int = 2
    data_placement: str = "auto"
    device_data_limit: int | None = None
    population_size: int | None = None
    mesh: Any = None
    max_nonfinite_rounds: int = 1
    unreliable_clients: Any = None
    host_metrics: Any = ()

    def __post_init__(self):
        for name in ("batch_size", "epochs", "group_size", "max_nonfinite_rounds"):
            if not is_positive_int(getattr(self, name)):
                raise ValueError(
                    f"{name} must be a positive int; received {getattr(self, name)!r}."
                )
        if not isinstance(self.shuffle, bool):
            raise TypeError(f"shuffle must be True or False; received {self.shuffle!r}.")
        if self.chunk_size is not None and self.chunk_size != "auto":
            if not is_positive_int(self.chunk_size):
                raise ValueError(
                    f"chunk_size must be a positive int, 'auto' or None; received "
                    f"{self.chunk_size!r}."
                )
        try:
            bucket(np.array([1]), self.step_buckets)
        except (ValueError, TypeError) as e:
            raise ValueError(str(e)) from e
        if not isinstance(self.runner, (Vmap, Stepwise)) and self.runner not in RUNNERS:
            raise ValueError(
                f"runner must be one of {RUNNERS} or an executor "
                f"(fedjax_keras.parallel.Vmap(), Stepwise(group_size)); received {self.runner!r}."
            )
        if self.data_placement not in DATA_PLACEMENTS:
            raise ValueError(
                f"data_placement must be 'auto', 'device' or 'host'; received "
                f"{self.data_placement!r}."
            )
        limit = self.device_data_limit
        if limit is not None and not (is_integer(limit) and limit >= 0):
            raise TypeError(
                f"device_data_limit must be a number of bytes (int >= 0) or None; "
                f"received {limit!r}."
            )
        if self.population_size is not None and not is_positive_int(self.population_size):
            raise ValueError(
                f"population_size must be a positive int; received {self.population_size!r}."
            )
        object.__setattr__(self, "mesh", check_mesh(self.mesh))
        if self.unreliable_clients is not None and not isinstance(
            self.unreliable_clients, UnreliableClients
        ):
            raise TypeError(
                "unreliable_clients must be a fedjax_keras.data.UnreliableClients(dropout=..., "
                f"straggler_rate=..., straggler_work=...) or None; received "
                f"{self.unreliable_clients!r}."
            )
        hooks = self.host_metrics
        if callable(hooks):
            hooks = (hooks,)
        if not isinstance(hooks, (tuple, list)) or not all(callable(h) for h in hooks):
            raise TypeError(
                "host_metrics must be a function (state, metrics) -> dict or a tuple of them; "
                f"received {self.host_metrics!r}."
            )
        object.__setattr__(self, "host_metrics", tuple(hooks))

    @property
    def data_limit_bytes(self) -> int:
        """`device_data_limit` with its backend default filled in."""
        if self.device_data_limit is not None:
            return int(self.device_data_limit)
        # On a CPU the "device" copy is a second copy in host memory: keep it small.
        return 256 * 2**20 if jax.default_backend() == "cpu" else 4 * 2**30

    def chunk_size_for(self, cohort_size: int, num_devices: int) -> int:
        """Clients per chunk for a cohort: a pure function of the cohort size.

        Rounded up to a multiple of ``num_devices`` so each device runs as many
        clients as the others.
        """
        if self.chunk_size is None:
            size = max(cohort_size, 1)
        elif self.chunk_size == "auto":
            # Clients are sorted by step count before chunking, so a chunk wastes
            # little on padding; a sixteenth of the cohort keeps the per-call cost
            # amortised for large cohorts. On a CPU larger vmapped chunks gain
            # nothing; accelerators want many clients per call to fill the device.
            low, high = (16, 512) if jax.default_backend() == "cpu" else (512, 4096)
            # Never more than the cohort: padding clients cost as much as real ones in a vmap.
            size = int(min(max(cohort_size // 16, low), high, max(cohort_size, 1)))
        else:
            size = int(self.chunk_size)
        return -(-size // num_devices) * num_devices

    def executor_candidates(
        self, has_convolutions: bool, num_weight_tensors: int = 0
    ) -> tuple[list, bool]:
        """``(executors, measure)``: the executors to choose from, and whether to time them.

        ``num_weight_tensors`` (the model's trainable leaves) lets 'auto' skip
        timing for a large convolutional model on a CPU: timing compiles both
        host-driven step programs, and 'unroll' (two clients written out) costs
        about twice the compilation of 'sequential' for little gain when each
        step is large (MobileNetV2: a first round 3.5x Keras' first
        train_on_batch with timing, 1.65x with 'sequential').
        """
        if isinstance(self.runner, (Vmap, Stepwise)):
            return [self.runner], False
        named = {
            "vmap": Vmap(),
            "sequential": Stepwise(1),
            "unroll": Stepwise(self.group_size),
        }
        if self.runner in named:
            return [named[self.runner]], False
        conv_on_cpu = has_convolutions and jax.default_backend() == "cpu"
        if self.runner == "auto" and not conv_on_cpu:
            return [named["vmap"]], False
        # A vmapped scan of convolutions on XLA:CPU is several times slower
        # (grouped convolutions inside a while loop): time the host-driven ones.
        if self.runner == "auto" and conv_on_cpu and num_weight_tensors > AUTO_TIMING_MAX_TENSORS:
            return [named["sequential"]], False
        if conv_on_cpu:
            return [named["sequential"], named["unroll"]], True
        return [named["vmap"], named["sequential"]], True
