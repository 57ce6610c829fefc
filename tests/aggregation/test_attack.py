"""attacked: who is malicious and what they send; a 20% sign-flip attack on a blob task."""

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax
import pytest
from aggregator_helpers import contributions, run_round

import fedjax_keras
from fedjax_keras.aggregation import Aggregator, attacked, mean, median, sum, trimmed_mean


def _rows_seen_by_inner():
    """A stacked inner aggregator whose aggregate is every client's values, by slot."""

    def start(state, spec, capacity):
        return jax.tree.map(lambda s: jnp.zeros((capacity,) + s.shape, s.dtype), spec)

    def accumulate(acc, state, c):
        rows = jax.tree.map(lambda r, v: r.at[c.slots].set(v, mode="drop"), acc, c.values)
        return rows, c.client_states

    return Aggregator(
        lambda spec: (), start, accumulate, lambda acc, s, k: (acc, s, {}), stacked=True
    )


VALUES = {"w": np.arange(1.0, 401.0).reshape(200, 2)}


def _malicious(received, values=VALUES, factor=-3.0):
    """bool [clients]: which clients the inner aggregator saw corrupted by ``factor``."""
    honest = np.all(np.isclose(received["w"], values["w"]), axis=1)
    bad = np.all(np.isclose(received["w"], factor * values["w"]), axis=1)
    assert np.all(honest ^ bad)  # every client is exactly one of the two
    return bad


def test_redrawn_each_round_a_fraction_of_every_cohort():
    aggregator = attacked(_rows_seen_by_inner(), 0.3, "sign_flip", 3.0, fixed_per_client=False)
    first, _, metrics, _ = run_round(aggregator, [contributions(VALUES, seed=1)])
    bad = _malicious(first)
    assert abs(bad.mean() - 0.3) < 0.08
    assert float(metrics["attack/malicious_fraction"]) == pytest.approx(bad.mean())
    again, *_ = run_round(aggregator, [contributions(VALUES, seed=1)])
    np.testing.assert_array_equal(_malicious(again), bad)  # same keys, same clients
    other, *_ = run_round(aggregator, [contributions(VALUES, seed=2)])
    assert np.any(_malicious(other) != bad)  # a new round's keys, a new draw


def test_fixed_per_client_roles_live_in_the_client_rows():
    aggregator = attacked(_rows_seen_by_inner(), 0.3, "sign_flip", 3.0)
    spec = {"w": jax.ShapeDtypeStruct((2,), jnp.float32)}
    default = aggregator.client_init(spec)
    assert int(default["role"]) == 0 and default["inner"] == ()
    undecided = {"role": jnp.zeros(200, jnp.int8), "inner": ()}
    first, _, _, rows = run_round(
        aggregator, [contributions(VALUES, seed=1, client_states=undecided)]
    )
    bad = _malicious(first)
    roles = np.asarray(rows[0]["role"])
    np.testing.assert_array_equal(roles, np.where(bad, 2, 1))
    # Next round: other keys, but the stored roles decide.
    later, *_ = run_round(
        aggregator, [contributions(VALUES, seed=7, client_states={"role": roles, "inner": ()})]
    )
    np.testing.assert_array_equal(_malicious(later), bad)


@pytest.mark.parametrize(
    "kind, scale, want",
    [("sign_flip", 4.0, -4.0 * 10), ("scale", 4.0, 4.0 * 10), ("sign_flip", 1.0, -10.0)],
)
def test_every_client_malicious(kind, scale, want):
    values = {"w": np.full((5, 3), 2.0)}
    total, *_ = run_round(
        attacked(sum(), 1.0, kind, scale, fixed_per_client=False), [contributions(values)]
    )
    np.testing.assert_allclose(total["w"], np.full(3, want))
    clean, *_ = run_round(
        attacked(sum(), 0.0, kind, scale, fixed_per_client=False), [contributions(values)]
    )
    np.testing.assert_allclose(clean["w"], np.full(3, 10.0))


def test_gaussian_attackers_send_noise_of_the_given_stddev():
    values = {"w": np.ones((50, 400))}
    aggregator = attacked(_rows_seen_by_inner(), 1.0, "gaussian", 2.5, fixed_per_client=False)
    received, *_ = run_round(aggregator, [contributions(values)])
    noise = np.asarray(received["w"])
    assert abs(noise.std() - 2.5) < 0.05 and abs(noise.mean()) < 0.05
    assert not np.allclose(noise[0], noise[1])  # each client its own draw


def test_dropped_clients_are_neither_counted_nor_corrupted():
    values = {"w": np.array([[1.0], [np.nan], [3.0]])}
    total, _, metrics, _ = run_round(
        attacked(sum(), 1.0, "sign_flip", 2.0, fixed_per_client=False),
        [contributions(values, keep=[True, False, True])],
    )
    np.testing.assert_allclose(total["w"], [-8.0])
    assert float(metrics["attack/malicious_fraction"]) == 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fraction": 1.5}, "fraction must be in"),
        ({"fraction": 0.1, "kind": "label_flip"}, "kind must be one of"),
        ({"fraction": 0.1, "scale": "big"}, "scale must be a number"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        attacked(mean(), **kwargs)


# ------------------------------------------------------------------ the experiment
FEATURES, CLASSES = 10, 5


def _blobs(num_clients, per_client, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(CLASSES, FEATURES)).astype(np.float32) * 1.2

    def draw(n):
        y = rng.integers(0, CLASSES, n).astype(np.int32)
        return (means[y] + rng.normal(size=(n, FEATURES))).astype(np.float32), y

    x, y = draw(num_clients * per_client)
    data = fedjax_keras.FederatedData.from_arrays(x, y, np.arange(num_clients + 1) * per_client)
    return data, *draw(1000)


def test_sign_flipping_breaks_the_mean_not_the_median_or_the_trimmed_mean():
    """20% of the population sends -10 x its update (softmax regression, 15 rounds)."""
    data, x_test, y_test = _blobs(60, 20)
    net = keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, kernel_initializer="zeros")]
    )
    model = fedjax_keras.from_keras_model(
        net,
        data.client(0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )

    def accuracy(aggregator):
        process = fedjax_keras.algorithms.build_weighted_fed_avg(
            model, optax.sgd(0.1), aggregator=aggregator, batch_size=10, chunk_size=20
        )
        state, byzantine = process.initialize(0), []
        for r in range(15):
            out = process.next(state, data.sample_clients(20, seed=r))
            state = out.state
            byzantine.append(out.metrics.get("attack/malicious_fraction", 0.0))
        logits = np.asarray(model.apply(state.model, x_test))
        return np.mean(np.argmax(logits, axis=1) == y_test), np.mean(byzantine)

    attack = dict(fraction=0.2, kind="sign_flip", scale=10.0)
    clean, _ = accuracy(mean())
    broken, byzantine = accuracy(attacked(mean(), **attack))
    robust_median, _ = accuracy(attacked(median(), **attack))
    robust_trimmed, _ = accuracy(attacked(trimmed_mean(0.3), **attack))
    print(
        f"clean {clean:.3f} mean {broken:.3f} median {robust_median:.3f} "
        f"trimmed {robust_trimmed:.3f} byzantine {byzantine:.3f}"
    )
    assert 0.1 < byzantine < 0.3
    assert clean > 0.85
    assert broken < clean - 0.4  # collapsed
    assert robust_median > clean - 0.04
    assert robust_trimmed > clean - 0.04
