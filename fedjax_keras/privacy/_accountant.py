"""Privacy accounting for DP-FedAvg with Google's ``dp-accounting`` package.

A round of `fedjax_keras.aggregation.dp_aggregator` is a sampled Gaussian
mechanism on the clients (user-level DP): each client of a population of N
takes part with probability q (Poisson sampling,
`FederatedData.sample_clients_poisson`) or a cohort of ``q N`` clients is
drawn without replacement (``data.sample_clients``), its clipped update has
sensitivity C and the noise is ``N(0, (z C)^2)``. After T rounds the run is
(epsilon, delta)-DP with the epsilon that dp-accounting's RDP (Mironov
2017, arXiv:1702.07476) or PLD (privacy loss distributions, Doroshenko et
al. 2022, arXiv:2207.04380) accountant computes for T self-compositions of
that event. Poisson sampling uses the add-or-remove-one relation (TFF's
DP tutorial); fixed-size sampling the replace-one relation, for which
dp-accounting has RDP bounds only.

``pip install fedjax_keras[dp]`` installs dp-accounting.
"""

import dataclasses
import math

from fedjax_keras._numbers import is_integer, is_real

KINDS = ("rdp", "pld")
SAMPLINGS = ("poisson", "fixed")


def require_dp_accounting():
    """The ``dp_accounting`` module, or an ImportError that says how to install it."""
    try:
        import dp_accounting
    except ImportError as e:
        raise ImportError(
            "fedjax_keras.privacy needs Google's dp-accounting package; install it with "
            "`pip install fedjax_keras[dp]` (or `pip install dp-accounting`)."
        ) from e
    return dp_accounting


def _check_probability(q) -> float:
    if not is_real(q) or not 0 < q <= 1:
        raise ValueError(
            f"sampling_probability must be in (0, 1] (clients per round / population); "
            f"received {q!r}."
        )
    return float(q)


class Composed:
    """``epsilon(rounds)`` and the ``host_metrics`` hook, shared by the accountants.

    A subclass has ``noise_multiplier``, ``delta``, a ``_cache`` dict,
    ``event(rounds)`` (the run's dp-accounting event) and ``_fresh()`` (an
    empty dp-accounting accountant of the right neighbouring relation).
    """

    def epsilon(self, rounds: int) -> float:
        """Epsilon after ``rounds`` rounds (0 for none; inf without noise)."""
        rounds = int(rounds)
        if rounds < 0:
            raise ValueError(f"rounds must be >= 0; received {rounds}.")
        if rounds == 0:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        if rounds not in self._cache:
            accountant = self._fresh()
            accountant.compose(self.event(rounds))
            self._cache[rounds] = float(accountant.get_epsilon(self.delta))
        return self._cache[rounds]

    def __call__(self, state, metrics) -> dict:
        """``host_metrics`` hook: ``{'epsilon', 'delta'}`` after ``state.round_num`` rounds."""
        del metrics
        return {"epsilon": self.epsilon(int(state.round_num)), "delta": self.delta}


def check_population(population) -> int | None:
    """``population`` as an int (or None), else a ValueError."""
    if population is not None and (not is_integer(population) or population < 1):
        raise ValueError(f"population must be a positive int; received {population!r}.")
    return None if population is None else int(population)


def check_delta(delta, population: int | None) -> float:
    """``delta`` (None: ``1 / population``) as a float in (0, 1), else a ValueError with the fix."""
    if delta is None:
        if population is None:
            raise ValueError(
                "delta defaults to 1 / population: pass population= (clients in the "
                "population) or delta= explicitly."
            )
        delta = 1.0 / population
    if not is_real(delta) or not 0 < delta < 1:
        raise ValueError(f"delta must be in (0, 1); received {delta!r}.")
    return float(delta)


@dataclasses.dataclass(frozen=True)
class Accountant(Composed):
    """The (epsilon, delta) of a DP-FedAvg run after some rounds; build it with `accountant`.

    Pass it to a process as ``host_metrics=acc``: after each round it adds
    ``epsilon`` (for ``state.round_num`` rounds) and ``delta`` to the metrics.

    Attributes:
      noise_multiplier: z, the noise stddev in units of the clip norm.
      sampling_probability: q, the chance that a client joins a round.
      delta: the target delta.
      kind: ``'rdp'`` or ``'pld'``.
      sampling: ``'poisson'`` or ``'fixed'``.
      population: clients in the population (needed for ``'fixed'``), or None.
    """

    noise_multiplier: float
    sampling_probability: float
    delta: float
    kind: str = "rdp"
    sampling: str = "poisson"
    population: int | None = None
    _cache: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def event(self, rounds: int):
        """The dp_accounting ``DpEvent`` of ``rounds`` rounds."""
        dp = require_dp_accounting()
        gaussian = dp.GaussianDpEvent(self.noise_multiplier)
        if self.sampling == "poisson":
            sampled = dp.PoissonSampledDpEvent(self.sampling_probability, gaussian)
        else:
            cohort = round(self.sampling_probability * self.population)
            sampled = dp.SampledWithoutReplacementDpEvent(self.population, cohort, gaussian)
        return dp.SelfComposedDpEvent(sampled, rounds)

    def _fresh(self):
        dp = require_dp_accounting()
        relation = (
            dp.NeighboringRelation.ADD_OR_REMOVE_ONE
            if self.sampling == "poisson"
            else dp.NeighboringRelation.REPLACE_ONE
        )
        if self.kind == "rdp":
            return dp.rdp.RdpAccountant(neighboring_relation=relation)
        return dp.pld.PLDAccountant(neighboring_relation=relation)


def accountant(
    noise_multiplier: float,
    sampling_probability: float,
    delta: float | None = None,
    kind: str = "rdp",
    sampling: str = "poisson",
    population: int | None = None,
) -> Accountant:
    """A privacy accountant for DP-FedAvg (`fedjax_keras.aggregation.dp_aggregator`).

    Args:
      noise_multiplier: z >= 0 of the aggregator.
      sampling_probability: q in (0, 1]: clients per round over the population.
      delta: the target delta; None: ``1 / population``.
      kind: ``'rdp'`` (Renyi DP) or ``'pld'`` (privacy loss distributions,
        tighter, slower); ``'pld'`` needs ``sampling='poisson'``.
      sampling: ``'poisson'`` (`FederatedData.sample_clients_poisson`) or
        ``'fixed'`` (cohorts of ``round(q * population)`` drawn without
        replacement, ``data.sample_clients``).
      population: clients in the population; needed for ``'fixed'`` and for
        the default delta.

    Returns:
      An `Accountant`: ``acc.epsilon(rounds)``, and ``host_metrics=acc`` for a process.

    Raises:
      ImportError: dp-accounting is not installed (``pip install fedjax_keras[dp]``).
      ValueError: for arguments out of range or a combination dp-accounting cannot bound.

    Example:
      >>> acc = accountant(noise_multiplier=1.0, sampling_probability=0.01, population=10_000)
      >>> process = build_weighted_fed_avg(model, opt, aggregator=dp, host_metrics=acc)
    """
    require_dp_accounting()
    z = float(noise_multiplier)
    if not 0 <= z < math.inf:
        raise ValueError(f"noise_multiplier must be a finite number >= 0; received {z!r}.")
    q = _check_probability(sampling_probability)
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}; received {kind!r}.")
    if sampling not in SAMPLINGS:
        raise ValueError(f"sampling must be one of {SAMPLINGS}; received {sampling!r}.")
    population = check_population(population)
    if sampling == "fixed":
        if population is None:
            raise ValueError(
                "sampling='fixed' needs population= (the cohort is round(q * population) "
                "clients drawn without replacement)."
            )
        if kind == "pld":
            raise ValueError(
                "dp-accounting's PLD accountant does not support fixed-size sampling "
                "(sampling without replacement); use kind='rdp', or Poisson sampling "
                "(data.sample_clients_poisson and sampling='poisson')."
            )
    return Accountant(z, q, check_delta(delta, population), kind, sampling, population)


def noise_multiplier_for(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling_probability: float,
    kind: str = "rdp",
    sampling: str = "poisson",
    population: int | None = None,
    *,
    tolerance: float = 1e-3,
) -> float:
    """The smallest noise multiplier (to ``tolerance``, relative) whose run of ``rounds``
    rounds is (``target_epsilon``, ``delta``)-DP, by bisection over the accountant.

    Args:
      target_epsilon: epsilon > 0 to reach after ``rounds`` rounds.
      delta, sampling_probability, kind, sampling, population: as `accountant`.
      rounds: rounds of training >= 1.
      tolerance: relative width of the final bracket.

    Returns:
      z with ``accountant(z, ...).epsilon(rounds) <= target_epsilon``.

    Raises:
      ValueError: when no z up to 10^4 reaches the target.

    Example:
      >>> z = noise_multiplier_for(target_epsilon=2.0, delta=1e-5, rounds=1000,
      ...                          sampling_probability=0.01)
    """
    if not target_epsilon > 0:
        raise ValueError(f"target_epsilon must be > 0; received {target_epsilon!r}.")
    if not is_integer(rounds) or rounds < 1:
        raise ValueError(f"rounds must be an int >= 1; received {rounds!r}.")
    rounds = int(rounds)

    def epsilon(z):
        return accountant(z, sampling_probability, delta, kind, sampling, population).epsilon(
            rounds
        )

    high = 1.0
    while epsilon(high) > target_epsilon:
        high *= 2
        if high > 1e4:
            raise ValueError(
                f"No noise multiplier up to 1e4 reaches epsilon={target_epsilon} after {rounds} "
                "rounds; raise the target, lower the rounds or the sampling probability."
            )
    low = 0.0 if high == 1.0 else high / 2
    while high - low > tolerance * high:
        middle = 0.5 * (low + high)
        if epsilon(middle) <= target_epsilon:
            high = middle
        else:
            low = middle
    return high
