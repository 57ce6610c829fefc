"""Choosing an executor by timing the candidates once, agreed on by every process."""

import jax
import numpy as np


def agree_across_processes(choice: str, options: list[str]) -> str:
    """Process 0's ``choice`` on every process (timings differ from host to host).

    A multi-process run in which processes ran different executors would
    deadlock in the collectives or compute different numbers, so process 0
    decides and broadcasts. With one process, ``choice`` itself.
    """
    if jax.process_count() == 1:
        return choice
    from jax.experimental import multihost_utils

    index = multihost_utils.broadcast_one_to_all(np.int32(options.index(choice)))
    return options[int(index)]


def choose_fastest(bound: dict, carry, inputs, chunk, host) -> tuple[str, dict[str, float]]:
    """Times every bound executor on the same chunk and picks the cheapest per client-step.

    Nothing the probes compute is kept: the programs are pure and the carry
    is copied, so probing changes no number.

    Args:
      bound: name -> bound executor (``executor.bind(...)``).
      carry, inputs, chunk, host: the arguments of the first chunk's call.

    Returns:
      ``(name, {name: seconds per client-step})``, the name agreed across processes.
    """
    timings: dict[str, float] = {}
    # Two passes, best of each: the first program to run also pays one-off costs
    # (allocations, caches) that would otherwise bias the choice against it.
    for _ in range(2):
        for name, runner in bound.items():
            copy = jax.tree.map(lambda a: a.copy(), carry)
            seconds = runner.seconds_per_client_step(copy, inputs, chunk, host)
            timings[name] = min(seconds, timings.get(name, seconds))
    best = min(timings, key=timings.get)
    return agree_across_processes(best, list(bound)), timings
