"""Privacy accounting for DP-FTRL (tree aggregation) with dp-accounting's RDP bound.

`fedjax_keras.aggregation.dp_ftrl_aggregator` adds the binary-tree
mechanism's noise to prefix sums of clipped updates (Kairouz et al. 2021,
arXiv:2103.00039). Its guarantee assumes nothing about how cohorts are
sampled, only a bound on how often a client takes part:

- ``participation='once_per_tree'`` (the default): a client takes part in
  at most one round of each tree (with ``restart_rounds=k``, at most once in
  rounds ``1..k``, once in ``k+1..2k``, ...: one pass over a shuffled
  population per tree, as the paper's multi-epoch runs). Each tree of ``s``
  rounds is then dp-accounting's ``SingleEpochTreeAggregationDpEvent(z, s)``,
  RDP ``alpha ceil(log2(s + 1)) / (2 z^2)`` (a client changes at most that
  many nodes, each with sensitivity ``C``), and the trees compose;
- ``participation='once'``: a client takes part in at most one round of the
  whole run, whatever the restarts: one ``SingleEpochTreeAggregationDpEvent``
  with the run's tree sizes (only the deepest tree counts; the paper's
  Appendix D).

The neighbouring relation is dp-accounting's ``REPLACE_SPECIAL``: one
client's data replaced by a special (zero) record, the paper's Definition
1.1. A run of T rounds with ``restart_rounds=k`` has ``T // k`` full trees and
one of ``T % k`` rounds if that is not zero.
"""

import dataclasses
import math

from fedjax_keras._numbers import is_integer
from fedjax_keras.privacy._accountant import (
    Composed,
    check_delta,
    check_population,
    require_dp_accounting,
)

PARTICIPATIONS = ("once_per_tree", "once")


@dataclasses.dataclass(frozen=True)
class TreeAccountant(Composed):
    """The (epsilon, delta) of a DP-FTRL run after some rounds; build it with `tree_accountant`.

    Pass it to a process as ``host_metrics=acc``: after each round it adds
    ``epsilon`` (for ``state.round_num`` rounds) and ``delta`` to the metrics.

    Attributes:
      noise_multiplier: z, every tree node's noise stddev in units of the clip.
      restart_rounds: rounds per tree (the aggregator's), or None for one tree.
      delta: the target delta.
      participation: ``'once_per_tree'`` or ``'once'`` (module docstring).
    """

    noise_multiplier: float
    restart_rounds: int | None
    delta: float
    participation: str = "once_per_tree"
    _cache: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def tree_sizes(self, rounds: int) -> list[int]:
        """The rounds of each tree in a run of ``rounds`` rounds (the last may be partial)."""
        if self.restart_rounds is None:
            return [rounds]
        full, rest = divmod(rounds, self.restart_rounds)
        return [self.restart_rounds] * full + ([rest] if rest else [])

    def event(self, rounds: int):
        """The dp_accounting ``DpEvent`` of ``rounds`` rounds."""
        dp = require_dp_accounting()
        sizes = self.tree_sizes(rounds)
        if self.participation == "once":
            return dp.SingleEpochTreeAggregationDpEvent(self.noise_multiplier, sizes)
        # Trees of equal size compose as one self-composed event (the full ones, then the rest).
        tree = lambda size: dp.SingleEpochTreeAggregationDpEvent(self.noise_multiplier, size)  # noqa: E731
        full = sizes.count(sizes[0])
        rest = [tree(size) for size in sizes[full:]]
        return dp.ComposedDpEvent([dp.SelfComposedDpEvent(tree(sizes[0]), full), *rest])

    def _fresh(self):
        dp = require_dp_accounting()
        return dp.rdp.RdpAccountant(neighboring_relation=dp.NeighboringRelation.REPLACE_SPECIAL)


def tree_accountant(
    noise_multiplier: float,
    restart_rounds: int | None = None,
    delta: float | None = None,
    participation: str = "once_per_tree",
    population: int | None = None,
) -> TreeAccountant:
    """A privacy accountant for DP-FTRL (`fedjax_keras.aggregation.dp_ftrl_aggregator`).

    Args:
      noise_multiplier: z >= 0 of the aggregator.
      restart_rounds: the aggregator's ``restart_rounds`` (None: one tree).
      delta: the target delta; None: ``1 / population``.
      participation: ``'once_per_tree'`` (a client in at most one round of
        each tree) or ``'once'`` (in at most one round of the run); the
        guarantee holds only if the cohorts keep to it (module docstring).
      population: clients in the population, for the default delta.

    Returns:
      A `TreeAccountant`: ``acc.epsilon(rounds)``, and ``host_metrics=acc`` for a process.

    Raises:
      ImportError: dp-accounting is not installed (``pip install fedjax_keras[dp]``).
      ValueError: for arguments out of range.

    Example:
      >>> acc = tree_accountant(noise_multiplier=5.0, restart_rounds=100, population=10_000)
      >>> process = build_unweighted_fed_avg(model, opt, optax.sgd(1.0),
      ...                                    aggregator=dp_ftrl, host_metrics=acc)
    """
    require_dp_accounting()
    z = float(noise_multiplier)
    if not 0 <= z < math.inf:
        raise ValueError(f"noise_multiplier must be a finite number >= 0; received {z!r}.")
    if restart_rounds is not None and (not is_integer(restart_rounds) or restart_rounds < 1):
        raise ValueError(
            "restart_rounds must be None (one tree) or an int >= 1, as the aggregator's; "
            f"received {restart_rounds!r}."
        )
    if participation not in PARTICIPATIONS:
        raise ValueError(
            f"participation must be one of {PARTICIPATIONS}; received {participation!r}."
        )
    restart = None if restart_rounds is None else int(restart_rounds)
    delta = check_delta(delta, check_population(population))
    return TreeAccountant(z, restart, delta, participation)
