"""The state of a federated process between rounds, and what a round returns."""

import dataclasses
from typing import Any, NamedTuple

import flax.struct
import numpy as np

from fedjax_keras.models import ModelWeights


@flax.struct.dataclass
class ServerState:
    """The state of a federated process between rounds: one pytree, nothing hidden.

    `jax.jit`, `jax.tree.map`, `jax.device_put` and checkpoints see every
    array, the per-client table included.

    Attributes:
      model: the server's `ModelWeights`.
      optimizer_state: the server optimizer's state.
      algorithm_state: the algorithm's own server state (SCAFFOLD's control
        variate), or ``()``.
      aggregator_state: the aggregator's persistent state (an adaptive clip
        norm), or ``()``.
      client_states: the `fedjax_keras.client.ClientTable` of per-client
        state (leaves [population, ...]), or None when the algorithm keeps none.
      round_num: int64 scalar, rounds completed.
      seed: int64 scalar, the seed given to ``initialize``; with ``round_num``
        it determines every random choice of the next round.
      nonfinite_rounds: int64 scalar, consecutive rounds whose server update
        was not finite and was not applied.
      hyperparams: hyper-parameters that are arrays of the state rather than
        constants of the program (``{'client': {'learning_rate': ...}}``), so
        that runs with different values share one compiled program (sweeps);
        ``{}`` for none.
    """

    model: ModelWeights
    optimizer_state: Any
    algorithm_state: Any = ()
    aggregator_state: Any = ()
    client_states: Any = None
    round_num: Any = np.int64(0)
    seed: Any = np.int64(0)
    nonfinite_rounds: Any = np.int64(0)
    hyperparams: Any = dataclasses.field(default_factory=dict)


class RoundOutput(NamedTuple):
    """What ``process.next`` returns (TFF's ``LearningProcessOutput``).

    Attributes:
      state: the new `ServerState`.
      metrics: dict of Python floats / ints (NumPy arrays for vector metrics).
    """

    state: ServerState
    metrics: dict
