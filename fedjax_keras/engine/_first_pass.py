"""The first pass of a two-pass round: the cohort at the server weights, before training.

A `FirstPass` (`fedjax_keras.engine._algorithm`) is a round of its own shape:
a client program over the cohort's batches, an aggregator, and a step that
writes the aggregate into the algorithm state. So the engine runs it as it
runs any round, rather than through a branch in the round loop: a second
`FederatedProcess` over a derived `FederatedAlgorithm`, whose server update
is ``apply`` and whose model, optimizer and client states are the outer
state's. It runs

- on the same cohort, seed and round number, so the same clients drop out
  (``unreliable_clients``) and the same batches are cut;
- for one epoch (a full-batch statistic needs no more), without the
  ``host_metrics`` hooks (a privacy accountant must count a round once);
- with the outer process's cohort caches, so a population is checked and
  copied to the devices once.

Only its algorithm state comes back, with its loss and counts as
``first_pass/...`` metrics. A first pass whose update is not finite is not
applied (the algorithm state stays as it was) and counts toward
``max_nonfinite_rounds`` as any round does. Its aggregator must be stateless:
its state would have no place in the `ServerState`. The price is a second
compiled program per chunk shape and a second host-side plan per round;
`Sweep` refuses such algorithms (it vmaps one pass's programs over runs).
"""

import dataclasses

import jax

from fedjax_keras.engine._algorithm import FederatedAlgorithm

_REPORTED = ("loss", "num_examples", "num_clients", "num_dropped_clients")


class FirstPassRunner:
    """Runs ``process.algorithm.first_pass`` before each of ``process``'s rounds.

    Args:
      process: the outer `FederatedProcess` (built, its options checked).
      process_class: `FederatedProcess` (passed in: this module is imported by its module).
    """

    def __init__(self, process, process_class):
        algorithm = process.algorithm
        first = algorithm.first_pass

        def server_update(state, aggregate, key):
            del key
            return state.replace(algorithm_state=first.apply(state.algorithm_state, aggregate)), {}

        inner = FederatedAlgorithm(
            name=f"{algorithm.name} (first pass)",
            client_program=first.client_program,
            server_init=algorithm.server_init,
            server_update=server_update,
            aggregator=first.aggregator,
            broadcast=algorithm.broadcast,
        )
        options = dataclasses.replace(process.options, epochs=1, host_metrics=())
        fields = {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
        self._process = process_class(process.model, inner, **fields)
        self._process._cohort_caches = process._cohort_caches
        self._process._padding_warned = True  # the training pass warns for the same plan
        self._aggregator_state = self._process.initialize(0).aggregator_state
        if jax.tree.leaves(self._aggregator_state):
            raise ValueError(
                f"{algorithm.name}: a FirstPass aggregator must be stateless (its state has no "
                "place in the ServerState); use mean(), sum() or by_key of them."
            )

    def run(self, state, cohort):
        """``(state, cohort) -> (state with the first pass's algorithm state, metrics)``."""
        inner_state = state.replace(aggregator_state=self._aggregator_state, client_states=None)
        out = self._process.next(inner_state, cohort)
        metrics = {f"first_pass/{name}": out.metrics[name] for name in _REPORTED}
        return state.replace(algorithm_state=out.state.algorithm_state), metrics
