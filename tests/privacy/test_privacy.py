"""fedjax_keras.privacy: epsilon against dp_accounting called directly, calibration, hooks."""

import sys

import dp_accounting
import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras
from fedjax_keras.aggregation import dp_aggregator
from fedjax_keras.privacy import accountant, noise_multiplier_for
from fedjax_keras.testing import toy_models

Z, Q, DELTA = 1.1, 0.02, 1e-5


def _direct(kind, event, delta=DELTA, relation=dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE):
    if kind == "rdp":
        acc = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    else:
        acc = dp_accounting.pld.PLDAccountant(neighboring_relation=relation)
    return acc.compose(event).get_epsilon(delta)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
@pytest.mark.parametrize("rounds", [1, 250])
def test_poisson_epsilon_is_dp_accountings(kind, rounds):
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(Z)), rounds
    )
    ours = accountant(Z, Q, DELTA, kind=kind).epsilon(rounds)
    assert ours == pytest.approx(_direct(kind, event), rel=1e-9)
    assert 0 < ours < np.inf


def test_fixed_size_epsilon_is_dp_accountings_without_replacement():
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.SampledWithoutReplacementDpEvent(5000, 100, dp_accounting.GaussianDpEvent(Z)),
        300,
    )
    want = _direct("rdp", event, relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    acc = accountant(Z, 100 / 5000, DELTA, sampling="fixed", population=5000)
    assert acc.epsilon(300) == pytest.approx(want, rel=1e-9)


def test_epsilon_grows_with_rounds_and_falls_with_noise():
    acc = accountant(Z, Q, population=10_000)
    assert acc.delta == 1e-4  # 1 / population
    assert acc.epsilon(0) == 0.0
    assert acc.epsilon(10) < acc.epsilon(100) < acc.epsilon(1000)
    assert accountant(2 * Z, Q, DELTA).epsilon(100) < accountant(Z, Q, DELTA).epsilon(100)
    assert accountant(0.0, Q, DELTA).epsilon(5) == np.inf


def test_noise_multiplier_for_reaches_the_target_and_no_less_noise_does():
    target, rounds = 3.0, 500
    z = noise_multiplier_for(target, DELTA, rounds, Q, tolerance=1e-3)
    assert accountant(z, Q, DELTA).epsilon(rounds) <= target
    assert accountant(z * (1 - 3e-3), Q, DELTA).epsilon(rounds) > target
    with pytest.raises(ValueError, match="target_epsilon must be > 0"):
        noise_multiplier_for(0.0, DELTA, rounds, Q)


def test_accountant_reports_epsilon_after_each_round_of_a_process():
    data = make_clients([3, 4, 2, 5, 3, 4, 2, 3], seed=1)
    acc = accountant(0.8, 0.5, population=data.num_clients)
    process = fedjax_keras.algorithms.build_weighted_fed_avg(
        wrap(toy_models.mlp(seed=2)),
        optax.sgd(0.1),
        aggregator=dp_aggregator(0.8, clients_per_round=4, clip=1.0),
        batch_size=4,
        chunk_size=4,
        host_metrics=acc,
    )
    state = process.initialize(0)
    for r in range(2):
        out = process.next(state, data.sample_clients_poisson(0.5, seed=r))
        state = out.state
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(0.8)), 2
    )
    assert out.metrics["epsilon"] == pytest.approx(_direct("rdp", event, delta=1 / 8), rel=1e-9)
    assert out.metrics["delta"] == 1 / 8
    assert out.metrics["dp/noise_stddev"] == pytest.approx(0.8)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({}, "delta defaults to 1 / population"),
        ({"delta": 1e-5, "kind": "pld", "sampling": "fixed", "population": 100}, "PLD"),
        ({"delta": 1e-5, "sampling": "fixed"}, "needs population="),
        ({"delta": 1e-5, "kind": "moments"}, "kind must be one of"),
        ({"delta": 2.0}, "delta must be in"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        accountant(1.0, 0.01, **kwargs)
    with pytest.raises(ValueError, match="sampling_probability must be in"):
        accountant(1.0, 0.0, delta=1e-5)


def test_missing_dp_accounting_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)
    with pytest.raises(ImportError, match=r"pip install fedjax_keras\[dp\]"):
        accountant(1.0, 0.01, delta=1e-5)
