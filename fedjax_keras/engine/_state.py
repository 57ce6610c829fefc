"""The state of a federated process between rounds, and what a round returns.

Also the shapes the initial state is built from: one client's output
(`client_output_spec`) and its initial row of the client table
(`client_state_default`).
"""

import dataclasses
from typing import Any, NamedTuple

import flax.struct
import jax
import numpy as np

from fedjax_keras.client import ClientBatchArrays
from fedjax_keras.models import Model, ModelWeights


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


def client_output_spec(model: Model, algorithm):
    """One client's `ClientOutput` as `jax.ShapeDtypeStruct` (traced, nothing runs).

    Args:
      model: the process's `Model`.
      algorithm: the `FederatedAlgorithm`; its client program runs abstractly on
        one step of one example, [1, 1, ...], from the initial weights.
    """
    one = jax.tree.map(
        lambda s: jax.ShapeDtypeStruct((1, 1) + tuple(s.shape[1:]), s.dtype), model.input_spec
    )
    weights = model.initial_weights
    data = ClientBatchArrays(one["x"], one["y"], jax.ShapeDtypeStruct((1, 1), bool))
    default = algorithm.client_state_init
    row = () if default is None else default(weights)
    state = ServerState(weights, *algorithm.server_init(weights))
    return jax.eval_shape(
        lambda d, r: algorithm.client_program.run(
            algorithm.broadcast(state), d, jax.random.PRNGKey(0), r
        ),
        data,
        row,
    )


def client_state_default(algorithm, weights: ModelWeights, update_spec):
    """One client's initial row of the client table, or None when nothing is kept per client.

    Args:
      algorithm: the `FederatedAlgorithm` (its ``client_state_init``, its aggregator's
        ``client_init``).
      weights: the server weights the row derives from.
      update_spec: one client's update as `jax.ShapeDtypeStruct`
        (``client_output_spec(...).update``).
    """
    algorithm_row = None
    if algorithm.client_state_init is not None:
        algorithm_row = algorithm.client_state_init(weights)
    aggregator_row = algorithm.aggregator.client_init(update_spec)
    if algorithm_row is None and not jax.tree.leaves(aggregator_row):
        return None
    return {
        "algorithm": () if algorithm_row is None else algorithm_row,
        "aggregator": aggregator_row,
    }
