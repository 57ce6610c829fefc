"""End to end: reproducibility, dropped clients, no-op rounds, errors, learning sanity."""

import jax
import keras
import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras
from fedjax_keras.algorithms import build_fed_eval, build_weighted_fed_avg
from fedjax_keras.data import FederatedData, emnist_like
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH = 3


@pytest.fixture(scope="module")
def dropout_process():
    model = wrap(toy_models.mlp(dropout=0.5, seed=21))
    return build_weighted_fed_avg(
        model, optax.sgd(0.1), batch_size=BATCH, chunk_size=2, step_buckets=[4]
    )


def _run(process, cohort, seed, rounds=2):
    state = process.initialize(seed)
    for _ in range(rounds):
        state = process.next(state, cohort).state
    return state


def test_same_seed_is_bit_identical_and_another_seed_differs(dropout_process):
    cohort = make_clients([5, 3, 7], seed=22)
    a = _run(dropout_process, cohort, seed=3)
    b = _run(dropout_process, cohort, seed=3)
    assert_trees_all_close(a.model, b.model, rtol=0, atol=0)
    c = _run(dropout_process, cohort, seed=4)
    assert not np.allclose(a.model.trainable["dense/kernel"], c.model.trainable["dense/kernel"])


def test_seed_changes_shuffling_alone():
    """Without Dropout, only the shuffle depends on the seed."""
    model = wrap(toy_models.mlp(seed=23))
    process = build_weighted_fed_avg(model, optax.sgd(0.1), batch_size=2)
    cohort = make_clients([6], seed=24)
    a, b = _run(process, cohort, 0, rounds=1), _run(process, cohort, 1, rounds=1)
    assert not np.allclose(a.model.trainable["dense/kernel"], b.model.trainable["dense/kernel"])


# ----------------------------------------------------------------- dropped clients
def _with_nan_client(cohort: FederatedData, size=2) -> FederatedData:
    """``cohort`` plus a last client (so the others keep their positions) whose x holds a NaN."""
    clients = {cid: data for cid, data in cohort}
    bad = make_clients([size], seed=25).client(0)
    bad["x"] = bad["x"].copy()
    bad["x"][0, 1] = np.nan
    clients[99] = bad
    return FederatedData.from_client_dict(clients)


@pytest.fixture(scope="module")
def dense_model():
    return wrap(toy_models.mlp(seed=26))


@pytest.mark.parametrize("runner", ["vmap", "sequential"])
def test_nan_client_is_dropped_and_round_equals_round_without_it(dense_model, runner):
    process = build_weighted_fed_avg(
        dense_model,
        optax.sgd(0.1),
        optax.adam(0.01),
        batch_size=BATCH,
        chunk_size=2,
        step_buckets=[2],
        runner=runner,
    )
    cohort = make_clients([5, 3, 4], seed=27)
    state = process.initialize(0)
    clean = process.next(state, cohort)
    dirty = process.next(state, _with_nan_client(cohort))
    assert dirty.metrics["num_dropped_clients"] == 1
    assert clean.metrics["num_dropped_clients"] == 0
    for name in ("num_clients", "num_examples"):
        assert dirty.metrics[name] == clean.metrics[name]
    for name in ("loss", "sparse_categorical_accuracy"):
        assert dirty.metrics[name] == pytest.approx(clean.metrics[name], rel=1e-6)
    assert_trees_all_close(dirty.state.model, clean.state.model, rtol=1e-6, atol=1e-7)
    assert_trees_all_close(
        dirty.state.optimizer_state, clean.state.optimizer_state, rtol=1e-6, atol=1e-7
    )


@pytest.fixture(scope="module")
def adam_server_process(dense_model):
    return build_weighted_fed_avg(dense_model, optax.sgd(0.1), optax.adam(0.01), batch_size=BATCH)


@pytest.mark.parametrize("kind", ["all_dropped", "no_examples"])
def test_round_without_usable_clients_is_a_no_op_with_nan_metrics(adam_server_process, kind):
    """Nothing counted: the state is unchanged, and the metrics say NaN (with a warning),
    never a loss of 0.0 that reads as success."""
    process = adam_server_process
    if kind == "all_dropped":
        cohort, why = _all_nan(3), "all 3 client.s. with examples had non-finite results"
    else:
        cohort, why = make_clients([0, 0], seed=28), "2 client.s. hold no examples"
    state = process.initialize(0)
    with pytest.warns(RuntimeWarning, match=f"Round 0: .*{why}.*NaN"):
        out = process.next(state, cohort)
    assert_trees_all_close(out.state.model, state.model, rtol=0, atol=0)
    assert_trees_all_close(out.state.optimizer_state, state.optimizer_state, rtol=0, atol=0)
    assert out.metrics["num_examples"] == 0
    assert out.metrics["num_clients"] == 0
    assert out.metrics["num_dropped_clients"] == (3 if kind == "all_dropped" else 0)
    assert out.metrics["num_empty_clients"] == (0 if kind == "all_dropped" else 2)
    for name in ("loss", "sparse_categorical_accuracy"):
        assert np.isnan(out.metrics[name])
    assert int(out.state.round_num) == 1


def _all_nan(num_clients):
    cohort = make_clients([4] * num_clients, seed=29)
    clients = {}
    for cid, data in cohort:
        clients[cid] = {"x": np.full_like(data["x"], np.nan), "y": data["y"]}
    return FederatedData.from_client_dict(clients)


# ----------------------------------------------------------------- API edges
def test_cohort_as_list_of_tuples(adam_server_process):
    rng = np.random.default_rng(0)
    clients = [(rng.normal(size=(4, 4)).astype(np.float32), np.array([0, 1, 2, 0], np.int32))] * 2
    out = adam_server_process.next(adam_server_process.initialize(0), clients)
    assert out.metrics["num_clients"] == 2 and out.metrics["num_examples"] == 8


def test_bad_arguments_are_rejected_at_build_time(dense_model):
    with pytest.raises(ValueError, match="runner"):
        build_weighted_fed_avg(dense_model, optax.sgd(0.1), runner="fast")
    with pytest.raises(ValueError, match="non_trainable"):
        build_weighted_fed_avg(dense_model, optax.sgd(0.1), non_trainable="mean")
    with pytest.raises(ValueError, match="chunk_size"):
        build_weighted_fed_avg(dense_model, optax.sgd(0.1), chunk_size=0)
    with pytest.raises(TypeError, match="client_optimizer"):
        build_weighted_fed_avg(dense_model, "sgd")


@pytest.mark.parametrize("seed", [-1, 2**32, 1.5])
def test_out_of_range_seed_is_rejected_at_initialize(adam_server_process, seed):
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*32\)"):
        adam_server_process.initialize(seed)


def test_set_model_weights_checks_shapes(adam_server_process, dense_model):
    state = adam_server_process.initialize(0)
    bad = jax.tree.map(lambda a: np.zeros(np.shape(a) + (1,), np.float32), state.model)
    with pytest.raises(ValueError, match="do not match"):
        adam_server_process.set_model_weights(state, bad)
    doubled = jax.tree.map(lambda a: 2 * np.asarray(a), state.model)
    new = adam_server_process.set_model_weights(state, doubled)
    assert_trees_all_close(adam_server_process.get_model_weights(new), doubled)


# ----------------------------------------------------------------- learning
def test_protocol_a_accuracy_improves():
    """A small MLP on 20 emnist-like clients learns within 10 rounds of 10 clients."""
    data = emnist_like(seed=0, num_clients=20, num_classes=10, size_median=40, max_size=80)
    net = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Flatten(),
            keras.layers.Dense(
                32, activation="relu", kernel_initializer=keras.initializers.GlorotUniform(seed=1)
            ),
            keras.layers.Dense(10, kernel_initializer=keras.initializers.GlorotUniform(seed=2)),
        ]
    )
    model = wrap(net, (28, 28, 1))
    process = build_weighted_fed_avg(
        model, optax.sgd(0.05), batch_size=10, chunk_size=10, step_buckets=[4, 8]
    )
    evaluate = build_fed_eval(model, batch_size=40, chunk_size=20, step_buckets=[1, 2])
    state = process.initialize(0)

    def accuracy(weights):
        eval_state = evaluate.set_model_weights(evaluate.initialize(), weights)
        return evaluate.next(eval_state, data).metrics["sparse_categorical_accuracy"]

    before = accuracy(state.model)
    losses = []
    for round_num in range(10):
        out = process.next(state, data.sample_clients(10, seed=round_num))
        state = out.state
        losses.append(out.metrics["loss"])
    after = accuracy(state.model)
    assert after > before + 0.3, (before, after)
    assert np.mean(losses[-3:]) < 0.85 * np.mean(losses[:3])
    assert fedjax_keras.__version__


def test_cohort_that_does_not_fit_the_model_is_a_clear_error():
    model = fedjax_keras.from_keras_model(
        toy_models.mlp(seed=0),
        {"x": np.zeros((2, 4), np.float32), "y": np.zeros((2,), np.int32)},
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    process = fedjax_keras.algorithms.build_weighted_fed_avg(model, optax.sgd(0.1), batch_size=2)
    wrong = [{"x": np.zeros((3, 5), np.float32), "y": np.zeros((3,), np.int32)}]
    with pytest.raises(ValueError, match=r"\(5,\).*do not fit the model.*\(4,\)"):
        process.next(process.initialize(0), wrong)


def test_client_state_is_kept_by_population_id_under_sampling_with_replacement():
    model = wrap(toy_models.mlp(seed=4))
    data = make_clients([3, 5, 2, 4], (4,), seed=0)
    process = fedjax_keras.algorithms.build_scaffold(model, client_learning_rate=0.1, batch_size=2)
    cohort = data.sample_clients(6, seed=1)  # more than the population: with replacement
    assert len(set(cohort.client_ids)) == 6 and len(set(cohort.population_ids)) < 6
    state = process.next(process.initialize(0), cohort).state
    seen = state.client_states.seen_positions().tolist()
    assert seen == sorted(set(cohort.population_positions.tolist()))
    with pytest.raises(TypeError, match="stable client ids"):
        process.next(state, [data.client(0), data.client(1)])


def test_variable_length_inputs_the_model_accepts_are_not_rejected():
    net = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(20, 4),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    model = fedjax_keras.from_keras_model(
        net,
        {"x": np.zeros((2, 7), np.int32), "y": np.zeros((2,), np.int32)},
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    rng = np.random.default_rng(0)
    cohort = [{"x": rng.integers(0, 20, (5, 12)).astype(np.int32), "y": np.zeros(5, np.int32)}]
    process = build_weighted_fed_avg(model, optax.sgd(0.1), batch_size=2)
    out = process.next(process.initialize(0), cohort)
    assert out.metrics["num_examples"] == 5


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"shuffle": "no"}, TypeError, "shuffle must be True or False"),
        ({"step_buckets": "log"}, ValueError, "step_buckets"),
        ({"device_data_limit": "1GB"}, TypeError, "device_data_limit"),
        ({"group_size": True}, ValueError, "group_size"),
    ],
)
def test_engine_options_are_checked_at_build_time(kwargs, error, match):
    model = wrap(toy_models.mlp(seed=5))
    with pytest.raises(error, match=match):
        build_weighted_fed_avg(model, optax.sgd(0.1), **kwargs)


def test_builders_reject_a_keras_model_or_model_fn_with_the_fix():
    net = toy_models.mlp(seed=6)
    for wrong in (net, lambda: net):
        with pytest.raises(TypeError, match="from_keras_model"):
            build_weighted_fed_avg(wrong, optax.sgd(0.1))
    with pytest.raises(ValueError, match="mu"):
        fedjax_keras.algorithms.build_fed_prox(wrap(net), optax.sgd(0.1), mu=None)
