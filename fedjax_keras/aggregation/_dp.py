"""User-level differential privacy: DP-FedAvg's clipped, noised sum (TFF's DP aggregators).

McMahan et al., "Learning Differentially Private Recurrent Language Models",
ICLR 2018, arXiv:1710.06963 (DP-FedAvg, fixed clip); Andrew et al.,
"Differentially Private Learning with Adaptive Clipping", NeurIPS 2021,
arXiv:1905.03871 (the clip follows a target quantile of the update norms).

Per round, with clip norm ``C``, noise multiplier ``z`` and expected cohort
size ``n`` (``clients_per_round``):

1. each kept client's update is clipped to L2 norm ``C`` over all its leaves
   together; client weights are ignored (every client counts once, as TFF);
2. the clipped updates are summed and ``N(0, (z C)^2)`` is added to every
   coordinate of the sum, once per round;
3. the noised sum is divided by ``n``: a fixed denominator (TFF's
   ``DifferentiallyPrivateFactory.gaussian_fixed``), so the aggregate's
   sensitivity to one client is ``C / n`` whatever the cohort's actual size.

Adaptive clipping (``clip=None``; TFF's ``gaussian_adaptive``): the clip norm
is the aggregator's persistent state (``ServerState.aggregator_state``).
Each kept client also sends ``b_i = 1[||update_i|| <= C]``; the server
forms the private estimate ``b = (sum_i (b_i - 1/2) + N(0, s^2)) / n + 1/2``
(clamped to [0, 1]; ``s = clipped_count_stddev``, the paper's default
``n / 20``) and moves the clip geometrically toward the target quantile
``gamma``: ``C <- C * exp(-eta (b - gamma))`` (``eta = 0.2``). The count
query spends part of the privacy budget, so the sum's noise multiplier is
raised to ``z_sum = (z^-2 - (2 s)^-2)^-1/2`` (the paper's Theorem 1): the
two queries together are as private as one Gaussian sum with multiplier ``z``.

Round metrics: ``dp/clip`` (the clip norm used this round), ``dp/clipped_fraction``
(kept clients whose update was scaled down; a diagnostic computed from the
clients' true norms, not privatised, like the loss), ``dp/noise_stddev``
(the stddev of the noise added to the sum: ``z_sum * C``) and, when adaptive,
``dp/next_clip``.

Privacy guarantees assume the cohort is sampled as the accountant says
(`fedjax_keras.privacy.accountant`; Poisson sampling:
`FederatedData.sample_clients_poisson`).
"""

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._numbers import is_real
from fedjax_keras.aggregation._aggregator import (
    Aggregator,
    Contributions,
    masked_sum,
    zeros_like_spec,
)
from fedjax_keras.aggregation._clipping import (
    check_norm,
    client_norms,
    clip_factors,
    scale_clients,
)


class DPState(NamedTuple):
    """The persistent state of `dp_aggregator`.

    Attributes:
      clip: float32 scalar, the clip norm of the next round (fixed unless adaptive).
    """

    clip: jax.Array


class DPAccumulator(NamedTuple):
    """A round's running sums.

    Attributes:
      total: pytree like one update: the sum of the clipped updates.
      unclipped: float32 scalar, kept clients whose norm was at most the clip.
      kept: float32 scalar, kept clients.
    """

    total: Any
    unclipped: jax.Array
    kept: jax.Array


def start_clipped_sum(spec) -> DPAccumulator:
    """The empty `DPAccumulator` of a round (``spec``: one update's shapes)."""
    zero = jnp.zeros((), jnp.float32)
    return DPAccumulator(zeros_like_spec(spec), zero, zero)


def accumulate_clipped(acc: DPAccumulator, clip, c: Contributions) -> DPAccumulator:
    """``acc`` plus the chunk's kept updates, each clipped to L2 norm ``clip`` (weights ignored)."""
    norms = client_norms(c.values)
    # Non-kept clients may be NaN: masked_sum removes them with jnp.where.
    clipped = scale_clients(c.values, jnp.where(c.keep, clip_factors(norms, clip), 1.0))
    total = jax.tree.map(jnp.add, acc.total, masked_sum(clipped, c.keep))
    unclipped = acc.unclipped + jnp.sum(c.keep & (norms <= clip), dtype=jnp.float32)
    kept = acc.kept + jnp.sum(c.keep, dtype=jnp.float32)
    return DPAccumulator(total, unclipped, kept)


def clip_metrics(acc: DPAccumulator, clip) -> dict:
    """``dp/clip`` and ``dp/clipped_fraction`` (from the clients' true norms: a diagnostic)."""
    return {
        "dp/clip": jnp.asarray(clip, jnp.float32),
        "dp/clipped_fraction": (acc.kept - acc.unclipped) / jnp.maximum(acc.kept, 1.0),
    }


def check_non_negative(value, name: str) -> float:
    number = float(value) if is_real(value) else float("nan")
    if not 0 <= number < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0; received {value!r}.")
    return number


def sum_noise_multiplier(noise_multiplier: float, clipped_count_stddev: float) -> float:
    """The sum's noise multiplier when an adaptive clip's count shares the budget.

    ``(z^-2 - (2 s)^-2)^-1/2`` (Andrew et al. 2021, arXiv:1905.03871, Theorem 1;
    TFF's ``gaussian_adaptive``); 0 when ``z`` is 0.

    Raises:
      ValueError: when ``2 s <= z``: the count alone would spend the whole budget.
    """
    if noise_multiplier == 0:
        return 0.0
    if 2 * clipped_count_stddev <= noise_multiplier:
        raise ValueError(
            f"noise_multiplier={noise_multiplier} leaves no budget for the adaptive clip: "
            f"the clipped count's stddev ({clipped_count_stddev}) must exceed noise_multiplier "
            "/ 2. Raise clipped_count_stddev (the paper's default is clients_per_round / 20, so "
            "more clients per round), lower noise_multiplier, or pass clip= for a fixed clip."
        )
    value = (noise_multiplier**-2 - (2 * clipped_count_stddev) ** -2) ** -0.5
    if value >= 2 * noise_multiplier:
        warnings.warn(
            f"The adaptive clip's count query doubles the noise on the sum (multiplier "
            f"{value:.3g} instead of {noise_multiplier}); raise clipped_count_stddev or "
            "clients_per_round, or use a fixed clip.",
            RuntimeWarning,
            stacklevel=3,
        )
    return value


def dp_aggregator(
    noise_multiplier: float,
    clients_per_round: float,
    clip: float | None = None,
    target_quantile: float = 0.5,
    *,
    initial_clip: float = 0.1,
    clip_learning_rate: float = 0.2,
    clipped_count_stddev: float | None = None,
) -> Aggregator:
    """DP-FedAvg's aggregator: clip, sum, add Gaussian noise, divide by ``clients_per_round``.

    TFF's ``tff.learning.dp_aggregator`` (adaptive clip) and
    ``DifferentiallyPrivateFactory.gaussian_fixed`` (``clip=`` given); see the
    module docstring for the algorithm.

    Args:
      noise_multiplier: z >= 0, the noise stddev in units of the clip norm.
      clients_per_round: the expected cohort size n, the fixed denominator
        (the sampling probability times the population with Poisson sampling).
      clip: a fixed clip norm; None (default) for adaptive clipping.
      target_quantile: adaptive only: the fraction of clients whose update
        norm should be at most the clip (0.5: the median norm).
      initial_clip: adaptive only: the first round's clip norm (TFF's 0.1).
      clip_learning_rate: adaptive only: eta of the geometric update (0.2).
      clipped_count_stddev: adaptive only: the stddev of the noise on the
        count of unclipped clients (None: ``clients_per_round / 20``, or 0
        when ``noise_multiplier`` is 0, as TFF).

    Returns:
      An `Aggregator` whose state is a `DPState` and whose metrics are
      ``dp/clip``, ``dp/clipped_fraction``, ``dp/noise_stddev`` (plus
      ``dp/next_clip`` when adaptive).

    Raises:
      ValueError: for a negative noise multiplier, a non-positive cohort size
        or clip, a quantile outside [0, 1], or a count noise too small to
        leave the sum any budget (adaptive with the default count noise
        needs ``clients_per_round > 10 * noise_multiplier``, as TFF).

    Example:
      >>> fixed = dp_aggregator(noise_multiplier=1.0, clients_per_round=100, clip=0.5)
      >>> adaptive = dp_aggregator(noise_multiplier=1.0, clients_per_round=100)
    """
    z = check_non_negative(noise_multiplier, "noise_multiplier")
    n = check_norm(clients_per_round, "clients_per_round")
    adaptive = clip is None
    if adaptive:
        first_clip = check_norm(initial_clip, "initial_clip")
        target = float(target_quantile)
        if not 0 <= target <= 1:
            raise ValueError(f"target_quantile must be in [0, 1]; received {target_quantile!r}.")
        eta = check_non_negative(clip_learning_rate, "clip_learning_rate")
        if clipped_count_stddev is not None:
            count_stddev = check_non_negative(clipped_count_stddev, "clipped_count_stddev")
        else:
            # As TFF: without noise on the sum there is no budget to share.
            count_stddev = n / 20 if z > 0 else 0.0
        z_sum = sum_noise_multiplier(z, count_stddev)
    else:
        first_clip = check_norm(clip, "clip")
        z_sum = z

    def init(spec):
        del spec
        return DPState(jnp.float32(first_clip))

    def start(state, spec, capacity):
        del state, capacity
        return start_clipped_sum(spec)

    def accumulate(acc: DPAccumulator, state: DPState, c: Contributions):
        return accumulate_clipped(acc, state.clip, c), c.client_states

    def finalize(acc: DPAccumulator, state: DPState, key):
        sum_key, count_key = jax.random.split(key)
        leaves, treedef = jax.tree.flatten(acc.total)
        noise_stddev = z_sum * state.clip
        noised = [
            (leaf + noise_stddev * jax.random.normal(k, leaf.shape, leaf.dtype)) / n
            for leaf, k in zip(leaves, jax.random.split(sum_key, max(len(leaves), 1)))
        ]
        metrics = {**clip_metrics(acc, state.clip), "dp/noise_stddev": noise_stddev}
        new_state = state
        if adaptive:
            centred = acc.unclipped - 0.5 * acc.kept
            noise = count_stddev * jax.random.normal(count_key, (), jnp.float32)
            estimate = jnp.clip((centred + noise) / n + 0.5, 0.0, 1.0)
            new_state = DPState(state.clip * jnp.exp(-eta * (estimate - target)))
            metrics["dp/next_clip"] = new_state.clip
        return jax.tree.unflatten(treedef, noised), new_state, metrics

    return Aggregator(init=init, start=start, accumulate=accumulate, finalize=finalize)
