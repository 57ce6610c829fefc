"""Unreliable clients: dropouts leave the round, stragglers stop early, all from the seed."""

import math

import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras
from fedjax_keras.algorithms import build_weighted_fed_avg
from fedjax_keras.data import FederatedData, UnreliableClients
from fedjax_keras.testing import assert_trees_all_close, toy_models

BATCH = 2
SIZES = [5, 7, 3, 6, 4, 8, 2, 5]


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=81))


@pytest.fixture(scope="module")
def cohort():
    return make_clients(SIZES, seed=82)


def _round(model, cohort, unreliable=None, **options):
    options = {"batch_size": BATCH, "shuffle": False, "chunk_size": 3, **options}
    process = build_weighted_fed_avg(
        model, optax.sgd(0.1), unreliable_clients=unreliable, **options
    )
    return process.next(process.initialize(3), cohort)


def test_no_failures_equal_the_plain_run(model, cohort):
    plain = _round(model, cohort)
    idle = _round(model, cohort, UnreliableClients(dropout=0.0, straggler_rate=0.0))
    assert_trees_all_close(idle.state.model, plain.state.model, rtol=0, atol=0)
    assert "num_unreported_clients" not in idle.metrics


@pytest.mark.parametrize("runner", ["vmap", "sequential"])
def test_dropouts_are_the_seeds_draw_and_count_for_nothing(model, cohort, runner):
    unreliable = UnreliableClients(dropout=0.4)
    out = _round(model, cohort, unreliable, runner=runner)
    reported, _ = unreliable.draw(seed=3, round_num=0, num_clients=len(SIZES))
    assert 0 < (~reported).sum() < len(SIZES)  # the seed drops some, not all
    assert out.metrics["num_unreported_clients"] == int((~reported).sum())
    assert out.metrics["num_clients"] == int(reported.sum())
    # Without shuffling or Dropout layers, the round equals one on the reporting clients.
    kept = FederatedData.from_client_dict(
        {cid: data for (cid, data), ok in zip(cohort, reported) if ok}
    )
    expected = _round(model, kept)
    assert_trees_all_close(out.state.model, expected.state.model, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("runner", ["vmap", "sequential"])
def test_stragglers_complete_the_first_steps_only(model, cohort, runner):
    unreliable = UnreliableClients(straggler_rate=0.5, straggler_work=(0.2, 0.7))
    out = _round(model, cohort, unreliable, runner=runner)
    _, work = unreliable.draw(seed=3, round_num=0, num_clients=len(SIZES))
    assert out.metrics["num_stragglers"] == int((work < 1).sum()) > 0
    # The same round by hand: each straggler's data cut to its completed steps.
    truncated = {}
    for (cid, data), fraction in zip(cohort, work):
        steps = math.ceil(len(data["y"]) / BATCH)
        done = max(1, math.ceil(fraction * steps - 1e-9))
        n = min(len(data["y"]), done * BATCH)
        truncated[cid] = {"x": data["x"][:n], "y": data["y"][:n]}
    expected = _round(model, FederatedData.from_client_dict(truncated))
    assert out.metrics["num_examples"] == expected.metrics["num_examples"] < sum(SIZES)
    assert_trees_all_close(out.state.model, expected.state.model, rtol=1e-6, atol=1e-7)


def test_draws_do_not_depend_on_chunking(model, cohort):
    unreliable = UnreliableClients(dropout=0.2, straggler_rate=0.5)
    a = _round(model, cohort, unreliable, chunk_size=2, shuffle=True)
    b = _round(model, cohort, unreliable, chunk_size=None, shuffle=True)
    assert_trees_all_close(a.state.model, b.state.model, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dropout": 1.5}, "dropout must be a probability"),
        ({"straggler_rate": -0.1}, "straggler_rate"),
        ({"straggler_work": 0.0}, "straggler_work"),
        ({"straggler_work": (0.8, 0.2)}, "low <= high"),
    ],
)
def test_bad_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UnreliableClients(**kwargs)
    with pytest.raises(TypeError, match="unreliable_clients"):
        build_weighted_fed_avg(
            wrap(toy_models.mlp(seed=0)), optax.sgd(0.1), unreliable_clients={"dropout": 0.1}
        )
    assert fedjax_keras.data.UnreliableClients is UnreliableClients
