"""Unreliable clients (system heterogeneity), drawn per round from the seed.

Real cohorts lose clients that never report (dropouts) and receive partial
work from slow devices (stragglers). Both are simulated without changing any
compiled shape: a dropout is left out of the round like a padding client
(its update, metrics and stored state count for nothing; it is counted in
``num_unreported_clients``), and a straggler completes only the first
``ceil(work * steps)`` of its local steps (at least one): its later steps are
masked like padded ones, so its update, example count and weight are those
of the shorter run. FedNova (`build_fed_nova`) normalises such unequal
local work.

The draws depend on (seed, round, cohort position) only, never on chunking
or the executor, so a run repeats bit for bit and the same clients fail
whatever the layout.
"""

import dataclasses

import numpy as np

from fedjax_keras._numbers import is_real

# Mixed into the round's seed so these draws never coincide with the shuffle's.
_STREAM = 0x0DD5EED


def _is_probability(value) -> bool:
    return is_real(value) and 0 <= value <= 1


@dataclasses.dataclass(frozen=True)
class UnreliableClients:
    """How sampled clients fail or straggle (engine option ``unreliable_clients=``).

    Attributes:
      dropout: probability that a sampled client never reports.
      straggler_rate: probability that a (reporting) client is a straggler.
      straggler_work: the fraction of its local steps a straggler completes:
        a number in (0, 1], or ``(low, high)`` for a uniform draw per straggler.

    Example:
      >>> unreliable = UnreliableClients(dropout=0.1, straggler_rate=0.3, straggler_work=(0.2, 0.8))
      >>> reported, work = unreliable.draw(seed=0, round_num=0, num_clients=5)
      >>> reported.shape, work.shape
      ((5,), (5,))
    """

    dropout: float = 0.0
    straggler_rate: float = 0.0
    straggler_work: float | tuple[float, float] = 0.5

    def __post_init__(self):
        for name in ("dropout", "straggler_rate"):
            if not _is_probability(getattr(self, name)):
                raise ValueError(
                    f"{name} must be a probability in [0, 1]; received {getattr(self, name)!r}."
                )
        work = self.straggler_work
        bounds = tuple(work) if isinstance(work, (tuple, list)) else (work, work)
        if (
            len(bounds) != 2
            or not all(_is_probability(b) and b > 0 for b in bounds)
            or bounds[0] > bounds[1]
        ):
            raise ValueError(
                "straggler_work must be a fraction in (0, 1] or a pair (low, high) with "
                f"0 < low <= high <= 1; received {work!r}."
            )
        object.__setattr__(self, "straggler_work", work if bounds[0] != bounds[1] else bounds[0])

    @property
    def active(self) -> bool:
        return self.dropout > 0 or self.straggler_rate > 0

    def draw(self, seed: int, round_num: int, num_clients: int):
        """``(reported bool [clients], work float [clients])`` for a round's cohort positions.

        ``work`` is 1.0 for clients that do all their steps.
        """
        rng = np.random.default_rng([int(seed), int(round_num), _STREAM])
        reported = rng.random(num_clients) >= self.dropout
        straggles = rng.random(num_clients) < self.straggler_rate
        work = self.straggler_work
        low, high = work if isinstance(work, tuple) else (work, work)
        fractions = rng.uniform(low, high, num_clients)
        return reported, np.where(straggles, fractions, 1.0)


def completed_steps(num_steps: np.ndarray, work: np.ndarray) -> np.ndarray:
    """Steps each client completes: ``ceil(work * steps)``, at least one if it has any."""
    done = np.ceil(np.asarray(work) * num_steps - 1e-9).astype(num_steps.dtype)
    return np.where(num_steps > 0, np.clip(done, 1, num_steps), 0)
