"""dp_aggregator: clipping bound, DP-FedAvg by hand, noise stddev, adaptive clip, Poisson rounds."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from aggregator_helpers import contributions, run_round, spec_of
from compile_counter import CompileCounter
from engine_reference import SGD, delta, local_train, make_clients, sliced_batches, wrap

import fedjax_keras
from fedjax_keras.aggregation import DPState, client_norms, dp_aggregator
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH, LR = 3, 0.1


def test_no_client_contributes_more_than_the_clip_norm():
    values = {"a": np.array([[3e6], [0.01], [-2.0]]), "b": np.array([[4e6, 0], [0, 0], [0, 1]])}
    aggregator = dp_aggregator(0.0, clients_per_round=1, clip=0.5)
    for client in range(3):
        alone, _, metrics, _ = run_round(
            aggregator, [contributions(values, keep=np.arange(3) == client)]
        )
        norm = float(client_norms(jax.tree.map(lambda v: v[None], alone))[0])
        assert norm <= 0.5 * (1 + 1e-6)
    whole, _, metrics, _ = run_round(aggregator, [contributions(values)])
    # Client 0 -> [0.3], [0.4, 0]; client 1 as is; client 2 -> 0.5 * [-2, 0, 1] / sqrt(5).
    s = 0.5 / np.sqrt(5)
    np.testing.assert_allclose(whole["a"], [0.3 + 0.01 - 2 * s], rtol=1e-5)
    np.testing.assert_allclose(whole["b"], [0.4, s], rtol=1e-5)
    np.testing.assert_allclose(metrics["dp/clipped_fraction"], 2 / 3)
    assert float(metrics["dp/clip"]) == 0.5 and float(metrics["dp/noise_stddev"]) == 0.0


def test_weights_are_ignored_and_the_denominator_is_fixed():
    values = {"w": np.array([[1.0, 2.0], [3.0, -1.0], [np.nan, 0.0]])}
    value, *_ = run_round(
        dp_aggregator(0.0, clients_per_round=4, clip=100.0),
        [contributions(values, weights=[1.0, 7.0, 2.0], keep=[True, True, False])],
    )
    np.testing.assert_allclose(value["w"], [4.0 / 4, 1.0 / 4])


def test_noise_stddev_is_z_times_clip_on_the_sum():
    noise_multiplier, clip, n = 1.3, 0.5, 7.0
    values = {"w": np.zeros((2, 5000)), "v": np.zeros((2, 3, 1000))}
    aggregator = dp_aggregator(noise_multiplier, clients_per_round=n, clip=clip)
    spec = spec_of(values)
    state = aggregator.init(spec)
    acc, _ = aggregator.accumulate(aggregator.start(state, spec, 2), state, contributions(values))
    finalize = jax.jit(jax.vmap(lambda k: aggregator.finalize(acc, state, k)))
    noised, _, metrics = finalize(jax.random.split(jax.random.PRNGKey(3), 20))
    samples = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(noised)]) * n
    assert samples.size == 20 * 8000
    np.testing.assert_allclose(np.std(samples), noise_multiplier * clip, rtol=0.05)
    assert abs(np.mean(samples)) < 0.05 * noise_multiplier * clip
    np.testing.assert_allclose(metrics["dp/noise_stddev"], noise_multiplier * clip, rtol=1e-6)
    # Independent draws per round (key) and per leaf.
    assert not np.allclose(noised["w"][0], noised["w"][1])


def test_adaptive_noise_is_raised_for_the_count_query():
    # z = 1, n = 100: count stddev s = 5, z_sum = (1 - (2 * 5)^-2)^-1/2 (Andrew et al. Thm 1).
    aggregator = dp_aggregator(1.0, clients_per_round=100)
    values = {"w": np.zeros((1, 3))}
    _, state, metrics, _ = run_round(aggregator, [contributions(values)])
    np.testing.assert_allclose(metrics["dp/noise_stddev"], 0.1 * (1 - 0.01) ** -0.5, rtol=1e-6)
    assert float(metrics["dp/clip"]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="leaves no budget for the adaptive clip"):
        dp_aggregator(2.0, clients_per_round=20)  # s = 1: 2 s = z


@pytest.mark.parametrize("target, noise_multiplier", [(0.5, 0.0), (0.9, 0.0), (0.3, 0.5)])
def test_adaptive_clip_converges_to_the_target_quantile(target, noise_multiplier):
    """Norms ~ lognormal(log 2, 0.5): the clip settles where a `target` share is below it."""
    clients, rounds, size = 100, 300, 8
    aggregator = dp_aggregator(noise_multiplier, clients_per_round=clients, target_quantile=target)
    spec = {"w": jax.ShapeDtypeStruct((size,), jnp.float32)}

    def one_round(state, key):
        norm_key, dir_key, agg_key = jax.random.split(key, 3)
        norms = jnp.exp(jnp.log(2.0) + 0.5 * jax.random.normal(norm_key, (clients,)))
        directions = jax.random.normal(dir_key, (clients, size))
        directions /= jnp.linalg.norm(directions, axis=1, keepdims=True)
        c = contributions({"w": np.zeros((clients, size))})._replace(
            values={"w": norms[:, None] * directions}
        )
        acc, _ = aggregator.accumulate(aggregator.start(state, spec, clients), state, c)
        _, state, metrics = aggregator.finalize(acc, state, agg_key)
        return state, metrics["dp/clip"]

    state = aggregator.init(spec)
    assert isinstance(state, DPState) and float(state.clip) == pytest.approx(0.1)
    _, clips = jax.jit(lambda s, k: jax.lax.scan(one_round, s, k))(
        state, jax.random.split(jax.random.PRNGKey(0), rounds)
    )
    settled = float(np.mean(np.asarray(clips)[-100:]))
    # The lognormal's quantile by hand: exp(mu + sigma * Phi^-1(target)).
    inverse_normal = {0.5: 0.0, 0.9: 1.2815516, 0.3: -0.5244005}[target]
    true_quantile = 2.0 * np.exp(0.5 * inverse_normal)
    np.testing.assert_allclose(settled, true_quantile, rtol=0.08)
    assert float(clips[0]) == pytest.approx(0.1)


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=11))


@pytest.fixture(scope="module")
def cohort_and_deltas(model):
    """Four clients and their deltas from unshuffled local SGD (Model.train_step, by hand)."""
    cohort = make_clients([5, 2, 4, 3], seed=12)
    server = model.initial_weights
    deltas = [
        delta(local_train(model, server, sliced_batches(c["x"], c["y"], BATCH), SGD), server)
        for _, c in cohort
    ]
    return cohort, deltas


@pytest.mark.parametrize("clip", [1e6, 0.05])
def test_dp_fedavg_without_noise_is_the_clipped_sum_over_the_expected_cohort(
    model, cohort_and_deltas, clip
):
    """z = 0: w + sum_i clip(delta_i) / n, client weights ignored; with a clip no update
    reaches, FedAvg with uniform weights and the fixed denominator n."""
    cohort, deltas = cohort_and_deltas
    n = 6
    process = fedjax_keras.algorithms.build_weighted_fed_avg(
        model,
        optax.sgd(LR),
        aggregator=dp_aggregator(0.0, clients_per_round=n, clip=clip),
        batch_size=BATCH,
        shuffle=False,
    )
    out = process.next(process.initialize(0), cohort)
    total = {k: 0.0 for k in deltas[0]}
    for d in deltas:
        norm = np.sqrt(sum(np.sum(v**2) for v in d.values()))
        total = {k: total[k] + d[k] * min(1.0, clip / norm) for k in d}
    server = model.initial_weights.trainable
    want = {k: np.asarray(server[k]) + total[k] / n for k in total}
    assert_trees_all_close(out.state.model.trainable, want, rtol=1e-5, atol=1e-6)
    assert out.metrics["dp/clipped_fraction"] == (0.0 if clip > 1 else 1.0)


def test_poisson_cohorts_of_varying_size_compile_nothing_after_round_two(model):
    data = make_clients([4, 5, 6, 4, 5, 6, 4, 5, 6, 5, 4, 6, 5, 4, 6, 5], seed=3)
    cohorts = [data.sample_clients_poisson(0.4, seed=r) for r in range(5)]
    sizes = [c.num_clients for c in cohorts]
    assert len(set(sizes)) >= 3, sizes  # the sizes do vary
    process = fedjax_keras.algorithms.build_weighted_fed_avg(
        model,
        optax.sgd(LR),
        aggregator=dp_aggregator(0.5, clients_per_round=0.4 * 16),
        batch_size=BATCH,
        chunk_size=4,
    )
    with CompileCounter() as compiles:
        state = process.initialize(0)
        for cohort in cohorts[:2]:
            state = process.next(state, cohort).state
        jax.block_until_ready(state.model)
        warmup = len(compiles.names)
        for cohort in cohorts[2:]:
            out = process.next(state, cohort)
            state = out.state
        jax.block_until_ready(state.model)
    assert warmup > 0
    assert compiles.names[warmup:] == []
    assert out.metrics["num_clients"] == sizes[-1]
    # The adaptive clip moved (state carried between rounds).
    assert float(state.aggregator_state.clip) != pytest.approx(0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_multiplier": -1.0, "clients_per_round": 10}, "noise_multiplier must be"),
        ({"noise_multiplier": 1.0, "clients_per_round": 0}, "clients_per_round must be"),
        ({"noise_multiplier": 1.0, "clients_per_round": 10, "clip": 0.0}, "clip must be"),
        (
            {"noise_multiplier": 0.1, "clients_per_round": 10, "target_quantile": 1.5},
            "target_quantile must be in",
        ),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dp_aggregator(**kwargs)
