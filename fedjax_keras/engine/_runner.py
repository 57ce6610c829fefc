"""Which executor runs a process's chunks: the ``runner=`` option, fixed or measured once.

``runner=`` names the choice ('vmap', 'sequential', 'unroll', 'auto',
'timed', or an executor of `fedjax_keras.parallel`); `EngineOptions.executor_candidates`
turns it into the executors to choose from. When there is more than one, the
first chunk of the first round times each, every process of a multi-process
run agrees on the fastest, and the choice holds for the process's life.
Executors agree to about 1e-5, not bit for bit, so the choice is recorded
(``FederatedProcess.mode``, the ``runner`` metric).
"""

from typing import Any

from fedjax_keras.engine._options import EngineOptions
from fedjax_keras.parallel import ChunkProgram, Placement, agree_across_processes, choose_fastest


class RunnerChoice:
    """A process's executors, each bound once, and the one chosen.

    Args:
      options: the process's `EngineOptions` (its ``runner``).
      has_convolutions: whether the model has convolutions (they change the
        candidates on a CPU).
      num_weight_tensors: the model's trainable leaves (a large convolutional
        model is not timed on a CPU; see `EngineOptions.executor_candidates`).
      chunk_program: what every executor runs.
      placement: the mesh it runs on.
    """

    def __init__(
        self,
        options: EngineOptions,
        has_convolutions: bool,
        chunk_program: ChunkProgram,
        placement: Placement,
        num_weight_tensors: int = 0,
    ):
        self._candidates, self._measure = options.executor_candidates(
            has_convolutions, num_weight_tensors
        )
        self._chunk_program = chunk_program
        self._placement = placement
        self._bound: dict[str, Any] = {}
        self.name: str | None = None  # the chosen executor's, once chosen
        self.timings: dict[str, float] = {}  # seconds per client-step, when measured
        if len(self._candidates) == 1 and not self._measure:
            self.name = self._candidates[0].name

    def bind(self, executor):
        """``executor`` bound to the chunk program and mesh (bound once per name)."""
        if executor.name not in self._bound:
            self._bound[executor.name] = executor.bind(self._chunk_program, self._placement)
        return self._bound[executor.name]

    def executor_for(self, carry, inputs, chunk, host):
        """The bound executor: fixed by the options, or measured once on this chunk."""
        if self.name is None:
            bound = {e.name: self.bind(e) for e in self._candidates}
            name, timings = choose_fastest(bound, carry, inputs, chunk, host)
            self.name = agree_across_processes(name, list(bound))
            self.timings = timings
        if self.name not in self._bound:
            self.bind(self._candidates[0])
        return self._bound[self.name]
