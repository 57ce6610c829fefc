"""DP-FTRL: tree-aggregated noise on the prefix sums of clipped updates, no sampling assumed.

Kairouz et al., "Practical and Private (Deep) Learning without Sampling or
Shuffling", ICML 2021, arXiv:2103.00039 (DP-FTRL, its momentum variant and
restarts); TFF's ``DifferentiallyPrivateFactory.tree_aggregation``.

DP-FedAvg (`dp_aggregator`) adds fresh noise every round and needs the
cohorts to be sampled at random for its guarantee. DP-FTRL instead releases
noised *prefix sums* ``S_t = x_1 + ... + x_t`` of the rounds' clipped sums
``x_s``, with the noise of the binary-tree mechanism (Dwork et al. 2010,
Chan et al. 2011): node ``(level l, index k)`` of the tree covers rounds
``(k - 1) 2^l + 1 .. k 2^l`` and holds one draw of ``N(0, (z C)^2)`` per
coordinate; the noise of ``S_t`` is the sum of the ``popcount(t)`` nodes that
cover ``[1, t]`` (one per set bit ``l`` of ``t``, index ``t >> l``). A client
taking part in at most one round per tree touches at most ``ceil(log2(T +
1))`` nodes, which is what the accounting charges
(`fedjax_keras.privacy.tree_accountant`); any participation order is allowed.

What is released, and why (the server step). The FTRL model is
``w_t = w_0 + lr * S~_t / n`` (with client deltas, the negative of the
paper's gradients; ``n = clients_per_round``, a fixed denominator as in
`dp_aggregator`, and ``S~`` the noised prefix sum). This aggregator releases
each round the *difference* of consecutive noised prefix sums,
``r_t = (x_t + N_t - N_{t-1}) / n``, where ``N_t`` is the tree noise of ``S_t``
(TFF's ``TreeResidualSumQuery``). The releases of a tree sum to
``S~_t / n``, so the server's existing optimizer step,
``optax.sgd(lr)`` on the pseudo-gradient ``-r_t``, lands exactly on FTRL's
``w_0 + lr * S~_t / n``, and ``optax.sgd(lr, momentum=b)`` on DP-FTRLM's
``w_0 + lr * v_t`` with ``v_t = b v_{t-1} + S~_t / n`` (both equal
``w_0 + lr * sum_u r_u sum_{k <= t - u} b^k``; with ``nesterov=True`` also the
paper's Nesterov form). The alternatives were a server-optimizer factory
that keeps ``w_0`` and the running sum (a second copy of the model in the
server state, and a server step that only works with this aggregator), or a
new algorithm; releasing the difference keeps both halves in their existing
interfaces, works with every algorithm that takes ``aggregator=``, and is how
TFF composes tree aggregation with SGD. It relies on a constant server
learning rate (a schedule would weight the releases differently) and is
FTRL only for SGD with or without momentum; any other server optimizer is
still private (post-processing) but is not FTRL.

Restarts (``restart_rounds=k``; the paper's FTRL with restarts): after
``k`` rounds the tree starts afresh. The next release is ``(x + N'_1) / n``
with the new tree's first node and no ``-N_k``, so the model is FTRL
restarted from the current model (whose last noise stays in it), as TFF's
``RestartQuery`` resets the residual query. Restarting keeps every tree
shallow (``ceil(log2(k + 1))`` nodes per client per tree). Momentum buffers
of the server optimizer are not reset at a restart (TFF's research
DP-FTRLM zeroes its buffer there); without momentum this does not matter.

Noise: the node ``(l, k)`` of the current tree is drawn from
``fold_in(fold_in(tree_key, l), k)`` (split per leaf, in leaf order), where
``tree_key`` is taken from the round's key when the tree starts, so no noise
is stored: a round draws ``j + 1`` nodes, ``j`` the trailing ones of the
previous count (2 on average, ``log2 k + 1`` at most), in a while loop.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedjax_keras._numbers import is_integer
from fedjax_keras.aggregation._aggregator import Aggregator, Contributions
from fedjax_keras.aggregation._clipping import check_norm
from fedjax_keras.aggregation._dp import (
    DPAccumulator,
    accumulate_clipped,
    check_non_negative,
    clip_metrics,
    start_clipped_sum,
)


class TreeState(NamedTuple):
    """The persistent state of `dp_ftrl_aggregator` (in ``ServerState.aggregator_state``).

    Attributes:
      tree_key: uint32 [2] (the key data of the default PRNG): the key of the
        current tree's nodes; taken from the round's key at the tree's first round.
      rounds: int32 scalar, rounds released in the current tree (0 before the first).
      trees: int32 scalar, trees started (1 after the first round, +1 per restart).
    """

    tree_key: jax.Array
    rounds: jax.Array
    trees: jax.Array


def node_noise(tree_key: jax.Array, level, index, spec, stddev) -> object:
    """The noise of tree node ``(level, index)``: ``N(0, stddev^2)`` leaves shaped like ``spec``.

    Args:
      tree_key: uint32 [2], `TreeState.tree_key`.
      level, index: int32 scalars; the node covers rounds
        ``(index - 1) 2^level + 1 .. index 2^level`` of its tree.
      spec: pytree of arrays or `jax.ShapeDtypeStruct`, one update's shapes.
      stddev: the noise stddev (``z C``).
    """
    key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(tree_key), level), index)
    leaves, treedef = jax.tree.flatten(spec)
    keys = jax.random.split(key, max(len(leaves), 1))
    noise = [stddev * jax.random.normal(k, jnp.shape(s), s.dtype) for s, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noise)


def residual_noise(tree_key: jax.Array, count, spec, stddev) -> object:
    """``N_count - N_{count-1}``: the tree noise of prefix ``count`` minus that of the one before.

    With ``j`` the number of trailing zeros of ``count`` (>= 1), prefix
    ``count`` adds node ``(j, count >> j)`` and drops the nodes ``(l, (count -
    1) >> l)`` for ``l < j``; the higher nodes are shared and cancel.
    """
    count = jnp.asarray(count, jnp.int32)
    # Trailing zeros of count: the bit that turns on (count & -count is its power of two).
    top = jnp.int32(31) - jax.lax.clz(count & -count)

    def drop(level, total):
        gone = node_noise(tree_key, level, (count - 1) >> level, spec, stddev)
        return jax.tree.map(jnp.subtract, total, gone)

    added = node_noise(tree_key, top, count >> top, spec, stddev)
    return jax.lax.fori_loop(0, top, drop, added)


def _check_restart(restart_rounds) -> int | None:
    if restart_rounds is None:
        return None
    if not is_integer(restart_rounds) or restart_rounds < 1:
        raise ValueError(
            "restart_rounds must be None (one tree for the whole run) or an int >= 1 (rounds "
            f"per tree, e.g. the rounds of one pass over the clients); received {restart_rounds!r}."
        )
    return int(restart_rounds)


def dp_ftrl_aggregator(
    noise_multiplier: float,
    clients_per_round: float,
    clip: float,
    *,
    restart_rounds: int | None = None,
) -> Aggregator:
    """DP-FTRL's aggregator: clipped sums, tree noise, the round's share of the prefix sum.

    TFF's ``DifferentiallyPrivateFactory.tree_aggregation`` (Kairouz et al.
    2021, arXiv:2103.00039). Use it with a plain SGD server optimizer,
    ``server_optimizer=optax.sgd(lr)`` (or ``optax.sgd(lr, momentum=0.9)``
    for DP-FTRLM): the model is then exactly ``w_0 + lr * (noised prefix sum
    of the clipped sums) / clients_per_round`` (module docstring).

    Args:
      noise_multiplier: z >= 0: every tree node's noise stddev in units of the clip.
      clients_per_round: n > 0, the fixed denominator (the cohort size).
      clip: C > 0, the L2 norm every client's update is clipped to (all
        leaves together; client weights are ignored).
      restart_rounds: k >= 1 to start a fresh tree every k rounds (FTRL with
        restarts), None for one tree over the whole run.

    Returns:
      An `Aggregator` whose state is a `TreeState` and whose metrics are
      ``dp/clip``, ``dp/clipped_fraction``, ``dp/noise_stddev`` (per node,
      ``z C``), ``dp/prefix_noise_stddev`` (of the model's current noise,
      ``z C sqrt(popcount(t))``) and ``dp/tree_round`` (``t``, rounds into the
      current tree).

    Raises:
      ValueError: for a negative or non-finite noise multiplier, a
        non-positive cohort size or clip, or ``restart_rounds`` not None or
        an int >= 1.

    Example:
      >>> aggregator = dp_ftrl_aggregator(1.0, clients_per_round=100, clip=0.5, restart_rounds=50)
      >>> process = build_unweighted_fed_avg(model, client_opt, optax.sgd(1.0),
      ...                                    aggregator=aggregator)
    """
    z = check_non_negative(noise_multiplier, "noise_multiplier")
    n = check_norm(clients_per_round, "clients_per_round")
    c = check_norm(clip, "clip")
    restart = _check_restart(restart_rounds)
    stddev = z * c

    def init(spec):
        del spec
        zero = jnp.zeros((), jnp.int32)
        return TreeState(jnp.zeros_like(jax.random.key_data(jax.random.PRNGKey(0))), zero, zero)

    def start(state, spec, capacity):
        del state, capacity
        return start_clipped_sum(spec)

    def accumulate(acc: DPAccumulator, state: TreeState, contributions: Contributions):
        del state
        return accumulate_clipped(acc, c, contributions), contributions.client_states

    def finalize(acc: DPAccumulator, state: TreeState, key):
        fresh = state.rounds == 0
        if restart is not None:
            fresh = fresh | (state.rounds >= restart)
        tree_key = jnp.where(fresh, jax.random.key_data(key), state.tree_key)
        count = jnp.where(fresh, 0, state.rounds) + 1
        total = acc.total
        if stddev > 0:
            noise = residual_noise(tree_key, count, total, stddev)
            total = jax.tree.map(jnp.add, total, noise)
        released = jax.tree.map(lambda t: t / jnp.asarray(n, t.dtype), total)
        new_state = TreeState(tree_key, count, state.trees + fresh.astype(jnp.int32))
        popcount = jax.lax.population_count(count).astype(jnp.float32)
        metrics = {
            **clip_metrics(acc, c),
            "dp/noise_stddev": jnp.float32(stddev),
            "dp/prefix_noise_stddev": stddev * jnp.sqrt(popcount),
            "dp/tree_round": count,
        }
        return released, new_state, metrics

    return Aggregator(init=init, start=start, accumulate=accumulate, finalize=finalize)
