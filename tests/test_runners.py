"""The chunk runners against a plain Python loop; chunking, padding and caching invariance."""

import jax
import numpy as np
import optax
import pytest
from engine_reference import SGD, fed_avg_rounds, make_clients, wrap

import fedjax_keras  # noqa: F401  (selects the JAX backend before keras loads)
from fedjax_keras.algorithms import build_weighted_fed_avg
from fedjax_keras.client import MODES
from fedjax_keras.testing import assert_trees_all_close, toy_models

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
    "model_name, mode",
    [("dropout_model", mode) for mode in MODES]
    # The runners meant for convolutions on a CPU, with one.
    + [("conv_model", "unroll"), ("conv_model", "sequential")],
)
def test_engine_equals_python_loop(request, model_name, mode):
    """Every runner mode equals the client-by-client, batch-by-batch loop (two rounds)."""
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


def test_no_recompilation_after_warmup(dense_model):
    """Rounds 3-6 of similar cohorts compile nothing (count XLA backend compilations)."""
    compiles = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(kwargs.get("fun_name", event))

    data = make_clients([6, 3, 8, 5, 2, 7, 4, 6, 9, 1], seed=7)
    process = build_weighted_fed_avg(dense_model, optax.sgd(0.1), batch_size=BATCH, chunk_size=2)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        state = process.initialize(0)
        for round_num in range(2):
            state = process.next(state, data.sample_clients(4, seed=round_num)).state
        jax.block_until_ready(state.model)
        warmup = len(compiles)
        for round_num in range(2, 6):
            out = process.next(state, data.sample_clients(4, seed=round_num))
            state = out.state
        jax.block_until_ready(state.model)
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert warmup > 0  # the listener sees compilations at all
    assert compiles[warmup:] == []
    assert out.metrics["num_clients"] == 4


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
