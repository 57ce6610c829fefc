"""The round's guards: non-finite server updates are never applied, empty clients are counted."""

import jax
import keras
import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401
from fedjax_keras._tree import all_true
from fedjax_keras.algorithms import build_weighted_fed_avg
from fedjax_keras.engine._plan import chunk_arrays
from fedjax_keras.errors import NonFiniteServerUpdateError
from fedjax_keras.parallel import Vmap
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH = 3


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=51))


@pytest.fixture(scope="module")
def cohort():
    return make_clients([5, 3, 4], seed=52)


def test_nan_server_update_is_not_applied_and_raises_at_once(model, cohort):
    process = build_weighted_fed_avg(model, optax.sgd(0.1), optax.sgd(float("nan")), batch_size=3)
    state = process.initialize(0)
    before = jax.tree.map(np.array, state)
    with pytest.raises(
        NonFiniteServerUpdateError, match=r"round 0 was not finite in model.trainable\['dense/"
    ):
        process.next(state, cohort)
    assert_trees_all_close(state, before, rtol=0, atol=0)  # the caller's state is intact


def test_nonfinite_rounds_are_counted_until_the_limit(model, cohort):
    process = build_weighted_fed_avg(
        model, optax.sgd(0.1), optax.sgd(float("nan")), batch_size=BATCH, max_nonfinite_rounds=3
    )
    state = process.initialize(0)
    for round_num in range(2):
        out = process.next(state, cohort)
        assert out.metrics["server_update_nonfinite"] == 1
        assert np.isfinite(out.metrics["loss"])  # the clients trained fine
        assert int(out.state.nonfinite_rounds) == round_num + 1
        assert_trees_all_close(out.state.model, state.model, rtol=0, atol=0)
        state = out.state
    with pytest.raises(NonFiniteServerUpdateError, match="3 consecutive round"):
        process.next(state, cohort)


def test_a_finite_round_resets_the_count(model, cohort):
    """An exploding Adam step that fails once: the next finite round clears the streak."""
    process = build_weighted_fed_avg(
        model, optax.sgd(0.1), batch_size=BATCH, max_nonfinite_rounds=2
    )
    state = process.initialize(0).replace(nonfinite_rounds=np.int64(1))
    out = process.next(state, cohort)
    assert out.metrics["server_update_nonfinite"] == 0
    assert int(out.state.nonfinite_rounds) == 0


def test_clients_without_examples_are_counted_apart(model):
    cohort = make_clients([4, 0, 5, 0], seed=53)
    process = build_weighted_fed_avg(model, optax.sgd(0.1), batch_size=BATCH)
    out = process.next(process.initialize(0), cohort)
    assert out.metrics["num_clients"] == 2
    assert out.metrics["num_empty_clients"] == 2
    assert out.metrics["num_examples"] == 9
    assert out.metrics["num_dropped_clients"] == 0


def test_host_metrics_functions_add_to_each_rounds_metrics(model, cohort):
    seen = []

    def rounds_done(state, metrics):
        seen.append(metrics["num_clients"])
        return {"rounds_done": int(state.round_num)}

    process = build_weighted_fed_avg(
        model, optax.sgd(0.1), batch_size=BATCH, host_metrics=rounds_done
    )
    state = process.initialize(0)
    for expected in (1, 2):
        out = process.next(state, cohort)
        state = out.state
        assert out.metrics["rounds_done"] == expected
    assert seen == [3, 3]
    with pytest.raises(TypeError, match="host_metrics"):
        build_weighted_fed_avg(model, optax.sgd(0.1), host_metrics="epsilon")


def _dense_chain(num_layers: int) -> keras.Model:
    return keras.Sequential(
        [keras.Input((4,))]
        + [keras.layers.Dense(4, activation="relu") for _ in range(num_layers)]
        + [keras.layers.Dense(3)]
    )


def _compiled_sizes(num_layers: int) -> tuple[int, int]:
    """Instructions of the compiled chunk program (Vmap) and server program of FedAvg."""
    process = build_weighted_fed_avg(wrap(_dense_chain(num_layers)), optax.sgd(0.1), batch_size=3)
    plan = process.prepare_round(process.initialize(0), make_clients([3, 2], seed=54))
    state = plan.state
    carry = process.start_carry(state.aggregator_state, state.client_states, plan.capacity)
    chunk, host = chunk_arrays(plan, 0, plan.row_steps)
    bound = process.bound_executor(Vmap())
    programs = [
        jax.jit(bound.run_chunk).lower(carry, plan.inputs, chunk, bound.num_steps(host)),
        jax.jit(process.finish).lower(state, carry, plan.inputs.seed_and_round),
    ]
    return tuple(program.compile().as_text().count(" = ") for program in programs)


def test_bookkeeping_programs_grow_linearly_with_the_weight_tensors():
    """The non-finite guards read every leaf and gate every leaf: written as a chain of
    ``&``, XLA copied the chain into each leaf's fusion (programs ~ leaves squared,
    minutes of compilation for real models). Each 20 more weight tensors must add
    about as much code as the 20 before."""
    sizes = [_compiled_sizes(layers) for layers in (4, 14, 24)]  # 10, 30, 50 weight tensors
    for index, name in enumerate(("chunk program", "server program")):
        small, middle, large = (size[index] for size in sizes)
        assert large - middle < 1.25 * (middle - small), (
            f"{name}: {small}, {middle}, {large} instructions for 10, 30, 50 weight tensors"
        )


@pytest.mark.parametrize("shape", [(5,), (3, 7), (2, 0), (4, 1)])
def test_all_true_is_jnp_all(shape):
    flags = np.random.default_rng(55).random(shape) < 0.8
    for axis in range(len(shape)):
        np.testing.assert_array_equal(all_true(flags, axis), np.all(flags, axis))
