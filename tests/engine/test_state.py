"""ServerState is one pytree that jit and tree.map see whole; a foreign state is named."""

import jax
import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras  # noqa: F401
from fedjax_keras.algorithms import build_scaffold, build_weighted_fed_avg
from fedjax_keras.errors import StateMismatchError
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH = 3


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=41))


@pytest.fixture(scope="module")
def data():
    return make_clients([5, 3, 7, 4, 6, 2], seed=42)


@pytest.fixture(scope="module")
def scaffold(model, data):
    return build_scaffold(
        model, 0.1, batch_size=BATCH, population_size=data.num_clients, runner="vmap"
    )


@pytest.fixture(scope="module")
def scaffold_states(scaffold, data):
    states = [scaffold.initialize(0)]
    for round_num in range(5):
        states.append(scaffold.next(states[-1], data.sample_clients(3, seed=round_num)).state)
    return states


def test_tree_map_over_two_states_and_jit_traces_once(scaffold_states):
    first, last = scaffold_states[0], scaffold_states[-1]
    summed = jax.tree.map(lambda a, b: np.asarray(a) + np.asarray(b), first, last)
    assert summed.client_states.rows["algorithm"]["dense/kernel"].shape[0] == 6
    traces = []

    @jax.jit
    def identity(state):
        traces.append(1)
        return state

    for state in scaffold_states:
        jax.block_until_ready(identity(state))
    assert len(traces) == 1
    # The client table is part of the leaves that device_put and jit move.
    table_leaves = jax.tree.leaves(last.client_states)
    assert all(any(t is leaf for leaf in jax.tree.leaves(last)) for t in table_leaves)
    assert len(last.client_states.seen_positions()) > 0


def test_jitted_identity_state_continues_the_run(scaffold, scaffold_states, data):
    """A state that went through jit (round counters become jax scalars) still runs."""
    state = jax.jit(lambda s: s)(scaffold_states[2])
    a = scaffold.next(state, data.sample_clients(3, seed=2)).state
    assert_trees_all_close(a.model, scaffold_states[3].model, rtol=1e-6, atol=1e-7)


def test_a_state_from_another_process_is_named(scaffold, scaffold_states, model, data):
    fed_avg = build_weighted_fed_avg(model, optax.sgd(0.1), batch_size=BATCH)
    with pytest.raises(StateMismatchError, match="algorithm_state does not fit weighted_fed_avg"):
        fed_avg.next(scaffold_states[1], data)
    other_model = wrap(toy_models.mlp(hidden=5, seed=1))
    other = build_weighted_fed_avg(other_model, optax.sgd(0.1), batch_size=BATCH)
    with pytest.raises(StateMismatchError, match=r"state.model does not fit.*dense/kernel"):
        other.next(fed_avg.initialize(0), data)
    adam = build_weighted_fed_avg(model, optax.sgd(0.1), optax.adam(0.1), batch_size=BATCH)
    with pytest.raises(StateMismatchError, match="optimizer_state"):
        adam.next(fed_avg.initialize(0), data)
    with pytest.raises(StateMismatchError, match="ServerState"):
        fed_avg.next({"model": 1}, data)
