"""What a federated algorithm is made of: pure data and functions.

A `FederatedAlgorithm` bundles, like an optax transform or FedJAX's
``FederatedAlgorithm(init, apply)``:

- ``client_program``: one client's work in a round (start / step / finish,
  `fedjax_keras.client.ClientProgram`), returning a `ClientOutput` whose
  ``update`` goes to the aggregator;
- ``aggregator``: how the cohort's updates become one aggregate
  (`fedjax_keras.aggregation.Aggregator`; the weighted mean by default);
- ``server_init(weights) -> (optimizer_state, algorithm_state)``;
- ``server_update(state, aggregate, key) -> (state, metrics)``: the server
  step on a `ServerState`, with a PRNG key derived from (seed, round);
- ``broadcast(state)``: what every client receives (the model and the
  algorithm state by default);
- ``client_state_init(weights) -> row``: the persistent state of a client
  never seen (None when the algorithm keeps none);
- ``first_pass``: an optional `FirstPass`, a pass over the round's cohort at
  the server weights before local training (Mime's full-batch gradient,
  agnostic FedAvg's per-domain counts), run by `fedjax_keras.engine._first_pass`.

The engine (`FederatedProcess`) runs any such algorithm with any executor,
on any mesh; nothing in the round loop knows which algorithm it runs. A new
algorithm is one short file that builds one of these (docs/extending.md).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

from fedjax_keras.aggregation import Aggregator, mean
from fedjax_keras.client import ClientProgram
from fedjax_keras.models import Model, ModelWeights


class Broadcast(NamedTuple):
    """What the server sends every client of a round (the default `broadcast`).

    Attributes:
      model: the server's `ModelWeights`.
      algorithm_state: the algorithm's server state (SCAFFOLD's control variate).
      hyperparams: per-run client hyper-parameters (``state.hyperparams['client']``,
        a vmapped sweep's learning rates), ``{}`` for none.
    """

    model: ModelWeights
    algorithm_state: Any
    hyperparams: Any = {}


def default_broadcast(state) -> Broadcast:
    """The server model, the algorithm state and the clients' hyper-parameters."""
    return Broadcast(state.model, state.algorithm_state, state.hyperparams.get("client", {}))


class FirstPass(NamedTuple):
    """A pass over the round's cohort before its training pass, for what needs the whole cohort.

    Some algorithms need, before any client trains, a statistic of the round's
    whole cohort at the server weights (Mime's mean full-batch gradient ``c``).
    The engine runs ``client_program`` on the same clients and batches (one
    epoch), combines its updates with ``aggregator`` and writes the result
    into the algorithm state with ``apply``; then the round broadcasts and
    trains as usual.

    Attributes:
      client_program: a `ClientProgram` receiving ``broadcast(state)``; its
        ``update`` goes to ``aggregator``, its loss and examples are reported
        as ``first_pass/loss`` and ``first_pass/num_examples``.
      apply: ``(algorithm_state, aggregate) -> algorithm_state``, pure.
      aggregator: combines the updates (default: the weighted mean).
    """

    client_program: ClientProgram
    apply: Callable[[Any, Any], Any]
    aggregator: Aggregator = mean()


class FederatedAlgorithm(NamedTuple):
    """A federated algorithm as pure data and functions (see the module docstring).

    Attributes:
      name: for messages and the metrics.
      client_program: the clients' `ClientProgram`.
      server_init: ``(weights) -> (optimizer_state, algorithm_state)``.
      server_update: ``(state, aggregate, key) -> (state, metrics dict)``.
      aggregator: turns the clients' updates into the aggregate.
      broadcast: ``(state) -> what every client receives``.
      client_state_init: ``(weights) -> one client's initial persistent
        state``, or None.
      first_pass: a `FirstPass` run over the cohort before local training, or None.
    """

    name: str
    client_program: ClientProgram
    server_init: Callable[[ModelWeights], tuple[Any, Any]]
    server_update: Callable[..., tuple[Any, dict]]
    aggregator: Aggregator = mean()
    broadcast: Callable[[Any], Any] = default_broadcast
    client_state_init: Callable[[ModelWeights], Any] | None = None
    first_pass: FirstPass | None = None


def require_model(model) -> None:
    """Raises a TypeError with the fix unless ``model`` came from `from_keras_model`."""
    if not isinstance(model, Model):
        raise TypeError(
            "The algorithm builders take the Model returned by fedjax_keras.from_keras_model; "
            f"received {type(model).__name__}. Wrap the Keras model first: "
            "model = fedjax_keras.from_keras_model(keras_model, dummy_batch, loss=...). "
            "(A TFF-style model_fn is not needed: call it and wrap its result once.)"
        )


def check_choice(value, choices, argument: str) -> None:
    """Raises a ValueError naming ``argument`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{argument} must be one of {choices}; received {value!r}.")
