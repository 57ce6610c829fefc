"""The executors against a plain Python loop; chunking, padding and caching invariance."""

import jax
import numpy as np
import optax
import pytest
from compile_counter import CompileCounter
from engine_reference import SGD, fed_avg_rounds, make_clients, wrap

import fedjax_keras  # (selects the JAX backend before keras loads)
from fedjax_keras.algorithms import build_weighted_fed_avg
from fedjax_keras.testing import assert_trees_all_close, toy_models

MODES = ("vmap", "unroll", "sequential")

BATCH = 3
# Six clients: a zero-example client, a partial last batch, skewed step counts.
SIZES = [7, 2, 5, 0, 4, 9]
CONV_SHAPE = (8, 8, 1)


@pytest.fixture(scope="module")
def dropout_model():
    return wrap(toy_models.mlp(dropout=0.5, seed=1))


@pytest.fixture(scope="module")
def conv_model():
    return wrap(toy_models.cnn(input_shape=CONV_SHAPE, seed=2), CONV_SHAPE)


@pytest.fixture(scope="module")
def dense_model():
    return wrap(toy_models.mlp(seed=3))


def _run(process, cohorts, seed=0):
    state = process.initialize(seed)
    for cohort in cohorts:
        state = process.next(state, cohort).state
    return state


@pytest.mark.parametrize(
    "model_name, mode, placement",
    [("dropout_model", mode, "device") for mode in MODES]
    # Batches built on the host (what 'auto' picks for large populations).
    + [("dropout_model", mode, "host") for mode in ("vmap", "sequential")]
    # The runners meant for convolutions on a CPU, with one.
    + [("conv_model", "unroll", "device"), ("conv_model", "sequential", "host")],
)
def test_engine_equals_python_loop(request, model_name, mode, placement):
    """Every executor, with data on the devices or batched on the host, equals the
    client-by-client, batch-by-batch loop (two rounds)."""
    model = request.getfixturevalue(model_name)
    x_shape = CONV_SHAPE if model_name == "conv_model" else (4,)
    cohorts = [make_clients(SIZES, x_shape, seed=0), make_clients(SIZES[::-1], x_shape, seed=1)]
    process = build_weighted_fed_avg(
        model,
        optax.sgd(0.1),
        optax.sgd(0.7),
        batch_size=BATCH,
        epochs=2,
        shuffle=True,
        chunk_size=4,
        step_buckets=[8],  # one chunk shape: fewer compilations
        runner=mode,
        data_placement=placement,
    )
    state = _run(process, cohorts, seed=5)
    expected = fed_avg_rounds(
        model,
        cohorts,
        client_optimizer=SGD,
        server_optimizer=optax.sgd(0.7),
        batch_size=BATCH,
        epochs=2,
        shuffle=True,
        seed=5,
    )
    assert process.mode == mode
    assert_trees_all_close(state.model, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def chunked_results(dense_model):
    """One cohort under different chunk sizes and step buckets (different padding)."""
    cohort = make_clients(SIZES, seed=3)
    results = {}
    for chunk_size, buckets in [(1, "exact"), (4, "pow2"), (None, [8, 16])]:
        process = build_weighted_fed_avg(
            dense_model,
            optax.sgd(0.1),
            batch_size=BATCH,
            epochs=2,
            chunk_size=chunk_size,
            step_buckets=buckets,
            runner="vmap",
        )
        state = process.initialize(1)
        out = process.next(state, cohort)
        results[(chunk_size, str(buckets))] = out
    return results


def test_result_does_not_depend_on_chunk_size_or_padding(chunked_results):
    outputs = list(chunked_results.values())
    first = outputs[0]
    for out in outputs[1:]:
        assert_trees_all_close(out.state.model, first.state.model, rtol=1e-5, atol=1e-6)
        for name in ("loss", "sparse_categorical_accuracy"):
            np.testing.assert_allclose(out.metrics[name], first.metrics[name], rtol=1e-5)
        # Examples trained on, as TFF counts them: every epoch's.
        assert out.metrics["num_examples"] == 2 * sum(SIZES)
    # The configurations really padded differently.
    assert len({out.metrics["padding_fraction"] for out in outputs}) > 1


def _sampled_cohorts(rounds):
    data = make_clients([6, 3, 8, 5, 2, 7, 4, 6, 9, 1], seed=7)
    return [data.sample_clients(4, seed=r) for r in range(rounds)]


def _list_cohorts(rounds):
    """Fresh lists of client dicts each round, of varying client sizes (one step bucket)."""
    rng = np.random.default_rng(8)
    return [
        [
            {
                "x": rng.normal(size=(n, 4)).astype(np.float32),
                "y": rng.integers(0, 3, n).astype(np.int32),
            }
            for n in rng.integers(4, 10, 4)
        ]
        for _ in range(rounds)
    ]


@pytest.mark.parametrize(
    "cohorts, mode",
    [("sampled", "vmap"), ("list", "vmap"), ("list", "sequential")],
)
def test_no_recompilation_after_warmup(dense_model, cohorts, mode):
    """Rounds 3-6 compile nothing (count XLA backend compilations), for cohorts sampled
    from a population and for fresh lists of client datasets (TFF's way)."""
    rounds = _sampled_cohorts(6) if cohorts == "sampled" else _list_cohorts(6)
    process = build_weighted_fed_avg(
        dense_model,
        optax.sgd(0.1),
        batch_size=BATCH,
        chunk_size=2,
        step_buckets=[4],
        runner=mode,
    )
    with CompileCounter() as compiles:
        state = process.initialize(0)
        for cohort in rounds[:2]:
            state = process.next(state, cohort).state
        jax.block_until_ready(state.model)
        warmup = len(compiles.names)
        for cohort in rounds[2:]:
            out = process.next(state, cohort)
            state = out.state
        jax.block_until_ready(state.model)
    assert warmup > 0  # the listener sees compilations at all
    assert compiles.names[warmup:] == []
    assert out.metrics["num_clients"] == 4


@pytest.mark.parametrize("mode", MODES)
def test_a_dropped_clients_stored_state_is_unchanged(conv_model, dense_model, mode):
    """SCAFFOLD with a client whose data holds a NaN: its control variate is not written."""
    data = make_clients([4, 5, 3], seed=9)
    clients = {cid: dict(c) for cid, c in data}
    bad = dict(clients[13])
    bad["x"] = bad["x"].copy()
    bad["x"][0, 0] = np.nan
    clients[13] = bad
    data = fedjax_keras.FederatedData.from_client_dict(clients)
    process = fedjax_keras.algorithms.build_scaffold(
        dense_model, 0.1, batch_size=BATCH, chunk_size=2, runner=mode
    )
    state = process.initialize(0)
    for _ in range(2):
        out = process.next(state, data)
        state = out.state
        assert out.metrics["num_dropped_clients"] == 1
    assert state.client_states.seen_positions().tolist() == [0, 2]
    row = state.client_states.gather(np.array([1]))["algorithm"]
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(row))


def test_a_client_drawn_twice_starts_both_draws_from_its_stored_row(dense_model):
    """Sampling with replacement: every draw reads the round-start row and the last draw's
    row is kept, whatever the chunking and the executor."""
    data = make_clients([4, 6, 3], seed=10)
    cohort = data.subset([1, 0, 1, 2, 1])
    results = []
    for chunk_size, mode in [(1, "vmap"), (2, "vmap"), (None, "vmap"), (2, "sequential")]:
        process = fedjax_keras.algorithms.build_scaffold(
            dense_model, 0.1, batch_size=BATCH, chunk_size=chunk_size, runner=mode
        )
        state = process.initialize(0)
        for _ in range(2):
            state = process.next(state, cohort).state
        results.append(state)
    for other in results[1:]:
        assert_trees_all_close(other.model, results[0].model, rtol=1e-5, atol=1e-6)
        assert_trees_all_close(other.client_states, results[0].client_states, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model_name, runner", [("conv_model", "auto"), ("dense_model", "timed")])
def test_timed_choice_probes_candidates_and_changes_no_number(request, model_name, runner):
    """'auto' (convolutions on a CPU) and 'timed' time their candidates on the first
    chunk, keep the cheaper one, and give the same model as that mode forced."""
    model = request.getfixturevalue(model_name)
    x_shape = CONV_SHAPE if model_name == "conv_model" else (4,)
    cohort = make_clients(SIZES, x_shape, seed=0)
    options = dict(batch_size=BATCH, chunk_size=4, step_buckets=[8], shuffle=True)
    chosen = build_weighted_fed_avg(model, optax.sgd(0.1), runner=runner, **options)
    state = _run(chosen, [cohort], seed=2)
    candidates = {"sequential", "unroll"} if model_name == "conv_model" else {"vmap", "sequential"}
    assert set(chosen.runner_timings) == candidates
    assert all(seconds > 0 for seconds in chosen.runner_timings.values())
    assert chosen.mode == min(chosen.runner_timings, key=chosen.runner_timings.get)
    forced = build_weighted_fed_avg(model, optax.sgd(0.1), runner=chosen.mode, **options)
    assert_trees_all_close(state.model, _run(forced, [cohort], seed=2).model, rtol=0, atol=0)


@pytest.mark.parametrize(
    "runner, convolutions, tensors, expected, timed",
    [
        ("auto", True, 8, ["sequential", "unroll"], True),
        ("auto", True, 300, ["sequential"], False),  # keras.applications' size: untimed
        ("timed", True, 300, ["sequential", "unroll"], True),  # 'timed' always times
        ("auto", False, 300, ["vmap"], False),
    ],
)
def test_auto_times_a_small_convolutional_model_on_a_cpu_not_a_large_one(
    runner, convolutions, tensors, expected, timed
):
    options = fedjax_keras.algorithms.EngineOptions(runner=runner)
    executors, measure = options.executor_candidates(convolutions, tensors)
    assert [e.name for e in executors] == expected and measure is timed
