"""Arrays changed in place between rounds: the next round uses the new values, and checks them.

`FederatedData.from_arrays` keeps the caller's arrays; the process keeps a device
copy of them and the result of its label check between rounds. After
``x *= 10`` or ``y[:] = 99`` the next round must train on the new values (equal to
a fresh process given a copy of them) and must refuse out-of-range labels.
"""

import numpy as np
import optax
import pytest
from engine_reference import NUM_CLASSES, wrap

import fedjax_keras as fk
from fedjax_keras import algorithms as alg
from fedjax_keras.data import FederatedData
from fedjax_keras.engine._fingerprint import BLOCK_BYTES, SourceFingerprint
from fedjax_keras.errors import LabelRangeError
from fedjax_keras.testing import assert_trees_all_close, toy_models

SIZES = (5, 3, 7, 4)
ENGINE = {"batch_size": 4, "shuffle": False, "chunk_size": 4}


def _arrays(seed=0):
    rng = np.random.default_rng(seed)
    n = sum(SIZES)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
    return x, y, np.concatenate([[0], np.cumsum(SIZES)])


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp())


def _process(model, placement):
    return alg.build_weighted_fed_avg(model, optax.sgd(0.1), data_placement=placement, **ENGINE)


def _after_one_round(model, placement):
    """``(x, y, offsets, data, process, state)``: one round trained on the caller's arrays."""
    x, y, offsets = _arrays()
    data = FederatedData.from_arrays(x, y, offsets)
    process = _process(model, placement)
    return x, y, offsets, data, process, process.next(process.initialize(0), data).state


@pytest.mark.parametrize("placement", ["device", "host"])
def test_inputs_scaled_in_place_are_trained_on(model, placement):
    x, y, offsets, data, process, state = _after_one_round(model, placement)
    x *= 10  # the caller's array, under the process's cached copy
    changed = process.next(state, data)

    reference = _process(model, placement)
    ref_state = reference.next(reference.initialize(0), FederatedData.from_arrays(*_arrays())).state
    expected = reference.next(ref_state, FederatedData.from_arrays(x.copy(), y.copy(), offsets))
    assert_trees_all_close(changed.state.model, expected.state.model, rtol=0, atol=0)
    assert changed.metrics["loss"] == expected.metrics["loss"]


@pytest.mark.parametrize("placement", ["device", "host"])
def test_labels_overwritten_in_place_are_checked_again(model, placement):
    _, y, _, data, process, state = _after_one_round(model, placement)
    y[:] = 99
    with pytest.raises(LabelRangeError, match="has the label 99"):
        process.next(state, data)


def test_a_change_outside_the_cohort_is_seen_by_the_round_that_reaches_it(model):
    x, y, offsets = _arrays()
    data = FederatedData.from_arrays(x, y, offsets)
    process = _process(model, "device")
    state = process.next(process.initialize(0), data.subset([0])).state
    y[offsets[3]] = 99  # a row of client 3
    # The first round whose cohort's rows share a block with it checks again.
    with pytest.raises(LabelRangeError, match="label 99"):
        process.next(state, data.subset([3]))


def test_fingerprint_rehashes_only_the_cohorts_blocks():
    rows = BLOCK_BYTES // (4 * 4)  # rows of float32 [4] per block
    x = np.zeros((3 * rows, 4), np.float32)
    fingerprint = SourceFingerprint({"x": x, "y": np.zeros((3 * rows,), np.int32)})
    x[2 * rows + 5, 1] = 1.0  # in block 2
    assert not fingerprint.changed([0, rows], [rows, rows])  # blocks 0 and 1
    assert not fingerprint.changed([2 * rows], [0])  # an empty client reads nothing
    assert fingerprint.changed([2 * rows - 1], [2])  # straddles blocks 1 and 2
    assert fingerprint.changed([0, 2 * rows + 5], [1, 1])


def test_a_sweep_sees_the_change_too(model):
    x, y, offsets = _arrays()
    data = FederatedData.from_arrays(x, y, offsets)
    sweep = fk.sweep(
        lambda c, s: alg.build_weighted_fed_avg(model, c, s, runner="vmap", **ENGINE),
        seeds=[0, 1],
        client_learning_rates=[0.1, 0.05],
    )
    states = sweep.next(sweep.initialize(), data).state
    y[:] = 99
    with pytest.raises(LabelRangeError, match="has the label 99"):
        sweep.next(states, data)
