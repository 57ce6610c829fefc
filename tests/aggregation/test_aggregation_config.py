"""from_config: every kind from plain data, equal to the builder's own; clear errors."""

import jax
import numpy as np
import pytest
from aggregator_helpers import contributions, run_round

import fedjax_keras  # noqa: F401
from fedjax_keras import aggregation as agg

VALUES = {"w": np.random.default_rng(0).normal(size=(7, 3)) * 4}
STATES = {"role": np.zeros(7, np.int8), "inner": ()}
RESIDUALS = {"residual": {"w": np.zeros((7, 3), np.float32)}, "inner": ()}

CASES = [
    ({"kind": "mean"}, agg.mean(), ()),
    ({"kind": "sum"}, agg.sum(), ()),
    (
        {"kind": "dp", "noise_multiplier": 1.0, "clients_per_round": 30},
        agg.dp_aggregator(1.0, 30),
        (),
    ),
    (
        {"kind": "dp", "noise_multiplier": 0.5, "clients_per_round": 10, "clip": 2.0},
        agg.dp_aggregator(0.5, 10, clip=2.0),
        (),
    ),
    (
        {"kind": "dp_ftrl", "noise_multiplier": 0.8, "clients_per_round": 7, "clip": 1.5},
        agg.dp_ftrl_aggregator(0.8, 7, 1.5),
        (),
    ),
    (
        {
            "kind": "dp_ftrl",
            "noise_multiplier": 1,
            "clients_per_round": 7,
            "clip": 1,
            "restart_rounds": 4,
        },
        agg.dp_ftrl_aggregator(1, 7, 1, restart_rounds=4),
        (),
    ),
    ({"kind": "clipped", "norm": 1.0}, agg.clipped(1.0, agg.mean()), ()),
    (
        {"kind": "zeroed", "norm": 5.0, "inner": {"kind": "clipped", "norm": 1.0}},
        agg.zeroed(5.0, agg.clipped(1.0, agg.mean())),
        (),
    ),
    ({"kind": "median"}, agg.median(), ()),
    ({"kind": "trimmed_mean", "beta": 0.2}, agg.trimmed_mean(0.2), ()),
    ({"kind": "krum", "num_byzantine": 1, "num_selected": 2}, agg.krum(1, 2), ()),
    (
        {"kind": "attacked", "fraction": 0.3, "scale": 5.0, "inner": {"kind": "median"}},
        agg.attacked(agg.median(), 0.3, scale=5.0),
        STATES,
    ),
    (
        {"kind": "attacked", "fraction": 0.5, "attack": "gaussian", "fixed_per_client": False},
        agg.attacked(agg.mean(), 0.5, "gaussian", fixed_per_client=False),
        (),
    ),
    ({"kind": "quantized", "bits": 8}, agg.quantized(8, agg.mean()), ()),
    (
        {"kind": "quantized", "bits": 4, "rotation": True},
        agg.quantized(4, agg.mean(), rotation=True),
        (),
    ),
    ({"kind": "top_k", "k": 2}, agg.top_k(2, agg.mean()), RESIDUALS),
]


@pytest.mark.parametrize("config, built, states", CASES, ids=lambda c: str(c)[:40])
def test_from_config_builds_the_same_aggregator(config, built, states):
    made = agg.from_config(config)
    assert isinstance(made, agg.Aggregator) and made.stacked == built.stacked
    chunk = contributions(VALUES, client_states=states)
    got, _, got_metrics, _ = run_round(made, [chunk], key=3)
    want, _, want_metrics, _ = run_round(built, [chunk], key=3)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    assert set(got_metrics) == set(want_metrics)


@pytest.mark.parametrize(
    "config, match",
    [
        ({"bits": 8}, "with a 'kind'"),
        ("median", "with a 'kind'"),
        ({"kind": "geometric_median"}, "Unknown aggregator kind 'geometric_median'"),
        ({"kind": "median", "beta": 0.1}, r"takes no argument\(s\) \['beta'\]"),
        ({"kind": "trimmed_mean"}, r"needs the argument\(s\) \['beta'\]"),
        (
            {"kind": "dp", "noise_multiplier": 1.0},
            r"needs the argument\(s\) \['clients_per_round'\]",
        ),
        (
            {"kind": "dp_ftrl", "noise_multiplier": 1.0, "clients_per_round": 10},
            r"needs the argument\(s\) \['clip'\]",
        ),
        (
            {
                "kind": "dp_ftrl",
                "noise_multiplier": 1.0,
                "clients_per_round": 10,
                "clip": 1,
                "restart": 5,
            },
            r"takes no argument\(s\) \['restart'\]; it accepts .*'restart_rounds'",
        ),
        (
            {
                "kind": "dp_ftrl",
                "noise_multiplier": 1.0,
                "clients_per_round": 10,
                "clip": 1,
                "restart_rounds": -2,
            },
            "restart_rounds must be None",
        ),
        ({"kind": "quantized", "bits": 8, "inner": {"kind": "nope"}}, "Unknown aggregator kind"),
        ({"kind": "mean", "inner": {"kind": "sum"}}, r"takes no argument\(s\) \['inner'\]"),
        ({"kind": "attacked", "fraction": 0.1, "attack": "label_flip"}, "kind must be one of"),
        ({"kind": "attacked"}, r"needs the argument\(s\) \['fraction'\]"),
    ],
)
def test_bad_configs_raise_clear_errors(config, match):
    with pytest.raises(ValueError, match=match):
        agg.from_config(config)
