"""dp_ftrl_aggregator: tree noise in closed form, restarts, FTRL by hand, processes, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from aggregator_helpers import contributions, run_round
from engine_reference import SGD, delta, local_train, make_clients, sliced_batches, wrap

import fedjax_keras
from fedjax_keras.aggregation import TreeState, dp_ftrl_aggregator
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR = 3, 0.1
ZEROS = {"w": np.zeros((2, 3)), "v": np.zeros((2, 2, 2))}


def _node(tree_key, level, index, stddev):
    """Node (level, index) as the module docstring defines it, drawn here independently."""
    key = jax.random.fold_in(jax.random.fold_in(tree_key, level), index)
    keys = jax.random.split(key, 2)  # leaves in flatten order: 'v', then 'w'
    return {
        "v": stddev * jax.random.normal(keys[0], (2, 2)),
        "w": stddev * jax.random.normal(keys[1], (3,)),
    }


def _covering(tree_key, t, stddev):
    """The tree noise of the prefix sum [1, t]: one node per set bit l of t, index t >> l."""
    levels = [level for level in range(t.bit_length()) if t >> level & 1]
    nodes = [_node(tree_key, level, t >> level, stddev) for level in levels]
    return jax.tree.map(lambda *leaves: np.sum(leaves, axis=0), *nodes)


def _released_sums(aggregator, rounds):
    """The running sums of the releases, round r finalized with key PRNGKey(r)."""
    state, running, sums, states = None, None, [], []
    for r in range(rounds):
        value, state, metrics, _ = run_round(aggregator, [contributions(ZEROS)], state=state, key=r)
        running = value if running is None else jax.tree.map(np.add, running, value)
        sums.append(running)
        states.append((state, metrics))
    return sums, states


def test_released_prefix_sums_are_exactly_the_covering_tree_nodes():
    z, clip, n = 1.3, 0.5, 4.0
    sums, states = _released_sums(dp_ftrl_aggregator(z, clients_per_round=n, clip=clip), 11)
    tree_key = jax.random.PRNGKey(0)  # taken from the first round's key
    for t, running in enumerate(sums, start=1):
        want = _covering(tree_key, t, z * clip)
        assert_trees_all_close(jax.tree.map(lambda v: v * n, running), want, rtol=0, atol=2e-6)
        state, metrics = states[t - 1]
        assert isinstance(state, TreeState) and int(state.rounds) == t and int(state.trees) == 1
        assert int(metrics["dp/tree_round"]) == t
        np.testing.assert_allclose(
            metrics["dp/prefix_noise_stddev"], z * clip * np.sqrt(bin(t).count("1")), rtol=1e-6
        )
        assert float(metrics["dp/noise_stddev"]) == pytest.approx(z * clip)


def test_a_restart_starts_a_fresh_tree_and_keeps_the_old_noise():
    z, clip, k = 1.0, 1.0, 3
    sums, states = _released_sums(
        dp_ftrl_aggregator(z, clients_per_round=1, clip=clip, restart_rounds=k), 2 * k + 2
    )
    first, second, third = (jax.random.PRNGKey(r) for r in (0, k, 2 * k))
    for t, running in enumerate(sums, start=1):
        tree, into = divmod(t - 1, k)
        keys = [first, second, third][: tree + 1]
        # Full earlier trees leave their last prefix noise; the current tree adds its own.
        parts = [_covering(key, k, z * clip) for key in keys[:-1]]
        parts.append(_covering(keys[-1], into + 1, z * clip))
        want = jax.tree.map(lambda *leaves: np.sum(leaves, axis=0), *parts)
        assert_trees_all_close(running, want, rtol=0, atol=5e-6)
        state, metrics = states[t - 1]
        assert int(state.rounds) == into + 1 and int(state.trees) == tree + 1
        assert int(metrics["dp/tree_round"]) == into + 1


def test_prefix_noise_variance_is_popcount_times_sigma_squared():
    """Monte Carlo over 2000 runs x 256 coordinates: Var S_t = popcount(t) s^2, and the
    covariance of two prefixes is s^2 times the nodes they share."""
    z, clip, rounds, runs = 0.8, 1.0, 8, 2000
    aggregator = dp_ftrl_aggregator(z, clients_per_round=1, clip=clip)
    spec = {"w": jax.ShapeDtypeStruct((256,), jnp.float32)}
    empty = aggregator.start(aggregator.init(spec), spec, 1)

    def run(key):
        def one_round(state, round_key):
            value, state, _ = aggregator.finalize(empty, state, round_key)
            return state, value["w"]

        _, releases = jax.lax.scan(one_round, aggregator.init(spec), jax.random.split(key, rounds))
        return jnp.cumsum(releases, axis=0)  # [rounds, 256]: S_1 .. S_rounds

    prefix = jax.jit(jax.vmap(run))(jax.random.split(jax.random.PRNGKey(7), runs))
    prefix = np.asarray(prefix).transpose(1, 0, 2).reshape(rounds, -1)  # [rounds, samples]
    sigma2 = (z * clip) ** 2
    for t in range(1, rounds + 1):
        np.testing.assert_allclose(np.var(prefix[t - 1]), bin(t).count("1") * sigma2, rtol=0.03)
    covariance = lambda a, b: np.mean(prefix[a - 1] * prefix[b - 1])  # noqa: E731
    # 3 = (1,1) + (0,3) and 2 = (1,1) share one node; 4 = (2,1) shares none with 3.
    np.testing.assert_allclose(covariance(2, 3), sigma2, rtol=0.05)
    assert abs(covariance(3, 4)) < 0.02 * sigma2
    # 7 = (2,1) + (1,3) + (0,7) and 6 = (2,1) + (1,3) share two.
    np.testing.assert_allclose(covariance(6, 7), 2 * sigma2, rtol=0.05)


def test_clients_are_clipped_weights_ignored_and_the_denominator_fixed():
    values = {"w": np.array([[3.0, 4.0], [0.3, 0.0], [np.nan, 1.0]])}
    value, _, metrics, _ = run_round(
        dp_ftrl_aggregator(0.0, clients_per_round=4, clip=1.0),
        [contributions(values, weights=[5.0, 1.0, 1.0], keep=[True, True, False])],
    )
    np.testing.assert_allclose(value["w"], [(0.6 + 0.3) / 4, 0.8 / 4], rtol=1e-6)
    np.testing.assert_allclose(metrics["dp/clipped_fraction"], 0.5)
    assert float(metrics["dp/prefix_noise_stddev"]) == 0.0


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=11))


@pytest.mark.parametrize("momentum", [None, 0.9])
def test_without_noise_the_model_is_ftrl_on_the_clipped_means(model, momentum):
    """3 rounds by hand: w_t = w_0 + lr * S_t / n with S_t the sum of the clipped client sums
    (momentum b: w_t = w_0 + lr * v_t, v_t = b v_{t-1} + S_t / n, the paper's DP-FTRLM)."""
    cohort = make_clients([5, 2, 4, 3], seed=12)
    n, clip, server_lr = 5, 0.05, 0.7
    process = fedjax_keras.algorithms.build_weighted_fed_avg(
        model,
        optax.sgd(LR),
        optax.sgd(server_lr, momentum=momentum),
        aggregator=dp_ftrl_aggregator(0.0, clients_per_round=n, clip=clip, restart_rounds=2),
        batch_size=BATCH,
        shuffle=False,
    )
    state = process.initialize(0)
    w0 = model.initial_weights
    server, prefix, velocity = w0, None, None
    for _ in range(3):
        state = process.next(state, cohort).state
        deltas = [
            delta(local_train(model, server, sliced_batches(c["x"], c["y"], BATCH), SGD), server)
            for _, c in cohort
        ]
        for d in deltas:
            norm = np.sqrt(sum(np.sum(v**2) for v in d.values()))
            scaled = {k: v * min(1.0, clip / norm) / n for k, v in d.items()}
            prefix = scaled if prefix is None else jax.tree.map(np.add, prefix, scaled)
        b = momentum or 0.0
        previous = jax.tree.map(np.zeros_like, prefix) if velocity is None else velocity
        velocity = {k: b * previous[k] + prefix[k] for k in prefix}
        trainable = {k: np.asarray(w0.trainable[k]) + server_lr * velocity[k] for k in velocity}
        server = fedjax_keras.ModelWeights(trainable, w0.non_trainable)
        assert_trees_all_close(state.model.trainable, trainable, rtol=1e-5, atol=1e-6)
    # Restarting after round 2 changes nothing without noise, but the tree count shows it.
    assert int(state.aggregator_state.trees) == 2 and int(state.aggregator_state.rounds) == 1


def test_a_noised_process_runs_the_same_under_both_runners_and_reports_epsilon(model):
    data = make_clients([4, 5, 6, 4, 5, 6, 4, 5], seed=3)
    accountant = fedjax_keras.privacy.tree_accountant(2.0, restart_rounds=2, delta=1e-3)
    finals = {}
    for runner in ("vmap", "sequential"):
        process = fedjax_keras.algorithms.build_unweighted_fed_avg(
            model,
            optax.sgd(LR),
            optax.sgd(1.0),
            aggregator=dp_ftrl_aggregator(2.0, clients_per_round=4, clip=0.1, restart_rounds=2),
            batch_size=BATCH,
            runner=runner,
            host_metrics=accountant,
        )
        state = process.initialize(5)
        # Two passes over the shuffled clients, one per tree: each client once per tree.
        order = np.random.default_rng(0).permutation(8)
        for r in range(4):
            out = process.next(state, data.subset(order[4 * (r % 2) : 4 * (r % 2) + 4]))
            state = out.state
            assert out.metrics["epsilon"] == pytest.approx(accountant.epsilon(r + 1))
        finals[runner] = state
    assert_trees_all_close(finals["vmap"].model, finals["sequential"].model, rtol=1e-5, atol=1e-6)
    assert int(finals["vmap"].aggregator_state.trees) == 2
    assert out.metrics["delta"] == 1e-3 and out.metrics["epsilon"] > accountant.epsilon(2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier must be a finite number >= 0"),
        ({"noise_multiplier": float("inf")}, "noise_multiplier must be"),
        ({"clients_per_round": 0}, "clients_per_round must be a positive finite number"),
        ({"clip": -0.5}, "clip must be a positive finite number"),
        ({"restart_rounds": 0}, r"restart_rounds must be None .* or an int >= 1.*received 0"),
        ({"restart_rounds": 2.5}, "restart_rounds must be"),
        ({"restart_rounds": True}, "restart_rounds must be"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    arguments = {"noise_multiplier": 1.0, "clients_per_round": 10, "clip": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        dp_ftrl_aggregator(**arguments)


def test_the_clip_is_required():
    with pytest.raises(TypeError, match="clip"):
        dp_ftrl_aggregator(1.0, 10)  # type: ignore[call-arg]


def test_a_sweep_of_two_noised_runs_equals_the_runs_alone(model):
    """Vmapped over runs, each run keeps its own tree (keys, counts) and restarts on time."""
    data = make_clients([4, 5, 6, 4, 5, 6], seed=4)
    seeds, client_lrs = [0, 1], [0.05, 0.1]
    engine = {"batch_size": BATCH, "chunk_size": 4, "runner": "vmap"}

    def build(client_opt, server_opt):
        aggregator = dp_ftrl_aggregator(1.0, clients_per_round=3, clip=0.1, restart_rounds=2)
        return fedjax_keras.algorithms.build_unweighted_fed_avg(
            model, client_opt, server_opt, aggregator=aggregator, **engine
        )

    sgd = optax.inject_hyperparams(optax.sgd)
    sweep = fedjax_keras.sweep(build, seeds, client_lrs)
    states = sweep.initialize()
    cohorts = [data.subset([0, 2, 4]), data.subset([1, 3, 5]), data.subset([5, 0, 1])]
    for cohort in cohorts:
        states = sweep.next(states, cohort).state
    for k, seed in enumerate(seeds):
        process = build(sgd(learning_rate=client_lrs[k]), sgd(learning_rate=1.0))
        alone = process.initialize(seed)
        for cohort in cohorts:
            alone = process.next(alone, cohort).state
        run = sweep.run_state(states, k)
        assert_trees_all_close(run.model, alone.model, rtol=1e-5, atol=1e-6)
        assert int(run.aggregator_state.trees) == 2 and int(run.aggregator_state.rounds) == 1
    assert not np.allclose(
        sweep.run_state(states, 0).aggregator_state.tree_key,
        sweep.run_state(states, 1).aggregator_state.tree_key,
    )
