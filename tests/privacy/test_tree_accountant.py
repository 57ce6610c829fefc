"""tree_accountant: DP-FTRL's epsilon against dp_accounting called directly and in closed form."""

import math

import dp_accounting
import numpy as np
import pytest

from fedjax_keras.privacy import TreeAccountant, tree_accountant

Z, DELTA = 4.0, 1e-5


def _direct(event, delta=DELTA):
    acc = dp_accounting.rdp.RdpAccountant(
        neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_SPECIAL
    )
    return acc.compose(event).get_epsilon(delta)


def _tree(steps):
    return dp_accounting.SingleEpochTreeAggregationDpEvent(Z, steps)


@pytest.mark.parametrize("rounds", [1, 100, 250])
def test_once_per_tree_composes_one_tree_event_per_restart(rounds):
    full, rest = divmod(rounds, 100)
    events = [_tree(100)] * full + ([_tree(rest)] if rest else [])
    want = _direct(dp_accounting.ComposedDpEvent(events))
    acc = tree_accountant(Z, restart_rounds=100, delta=DELTA)
    assert acc.tree_sizes(rounds) == [100] * full + ([rest] if rest else [])
    assert acc.epsilon(rounds) == pytest.approx(want, rel=1e-9)


def test_once_is_one_single_epoch_event_over_all_trees():
    want = _direct(_tree([100, 100, 50]))
    acc = tree_accountant(Z, restart_rounds=100, delta=DELTA, participation="once")
    assert acc.epsilon(250) == pytest.approx(want, rel=1e-9)
    # Only the deepest tree counts: as private as one tree of 100 rounds.
    assert acc.epsilon(250) == pytest.approx(acc.epsilon(100), rel=1e-12)


def test_epsilon_is_the_closed_form_rdp_of_the_tree_depth():
    """RDP of T // k trees of depth ceil(log2(k + 1)): alpha * depth * trees / (2 z^2), turned
    into epsilon with dp-accounting's RDP-to-DP conversion."""
    rounds, k = 640, 64
    depth, trees = math.ceil(math.log2(k + 1)), rounds // k
    orders = np.array(dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS, float)
    rdp = orders * depth * trees / (2 * Z**2)
    want, _ = dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, rdp, DELTA)
    got = tree_accountant(Z, restart_rounds=k, delta=DELTA).epsilon(rounds)
    assert got == pytest.approx(want, rel=1e-9)


def test_restarts_spend_less_than_one_deep_tree_only_per_tree():
    one_tree = tree_accountant(Z, delta=DELTA)
    restarted = tree_accountant(Z, restart_rounds=50, delta=DELTA)
    assert one_tree.epsilon(50) == pytest.approx(restarted.epsilon(50))
    # One tree of 200 rounds is depth 8; four trees of 50 (depth 6) compose to 24 nodes.
    assert one_tree.epsilon(200) < restarted.epsilon(200)
    assert one_tree.epsilon(0) == 0.0 and tree_accountant(0.0, delta=DELTA).epsilon(3) == math.inf


def test_host_metrics_hook_reports_epsilon_for_the_rounds_done():
    class State:
        round_num = np.int32(7)

    acc = tree_accountant(Z, restart_rounds=4, population=1000)
    assert isinstance(acc, TreeAccountant) and acc.delta == 1e-3
    assert acc(State(), {}) == {"epsilon": acc.epsilon(7), "delta": 1e-3}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"noise_multiplier": -1.0}, "noise_multiplier must be a finite number >= 0"),
        ({"restart_rounds": 0}, r"restart_rounds must be None \(one tree\) or an int >= 1"),
        ({"restart_rounds": 1.5}, "restart_rounds must be"),
        ({"participation": "poisson"}, r"participation must be one of \('once_per_tree', 'once'\)"),
        ({"delta": None}, "delta defaults to 1 / population: pass population="),
        ({"delta": 1.5}, r"delta must be in \(0, 1\)"),
        ({"delta": None, "population": 0}, "population must be a positive int"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, match):
    arguments = {"noise_multiplier": Z, "delta": DELTA, **kwargs}
    with pytest.raises(ValueError, match=match):
        tree_accountant(**arguments)
