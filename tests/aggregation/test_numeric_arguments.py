"""numpy scalars are numbers wherever a Python number is; bools and arrays are not.

``trimmed_mean(np.float32(0.2))`` or ``krum(np.int64(1))`` (what indexing an
array or a numpy config gives) build the same aggregator as the Python
number, aggregating to the same bits; ``True`` and 0-d arrays are refused with
the argument's name. One shared check (`fedjax_keras._numbers`) decides.
"""

import jax
import numpy as np
import pytest
from aggregator_helpers import contributions, run_round

from fedjax_keras import aggregation as agg
from fedjax_keras import algorithms as alg
from fedjax_keras import privacy
from fedjax_keras.testing import assert_trees_all_close

# name -> (build from a number, the Python number, its numpy twin, the argument's name)
AGGREGATORS = {
    "trimmed_mean": (agg.trimmed_mean, 0.2, np.float32(0.2), "beta"),
    "krum": (agg.krum, 1, np.int64(1), "num_byzantine"),
    "krum_selected": (lambda m: agg.krum(1, m), 2, np.int32(2), "num_selected"),
    "quantized": (lambda b: agg.quantized(b, agg.mean()), 8, np.int64(8), "bits"),
    "top_k": (lambda k: agg.top_k(k, agg.mean(), error_feedback=False), 5, np.int64(5), "k"),
    "clipped": (lambda n: agg.clipped(n, agg.mean()), 1.0, np.float32(1.0), "norm"),
    "dp_ftrl_clip": (lambda c: agg.dp_ftrl_aggregator(0.5, 6, c), 1.0, np.float32(1.0), "clip"),
    "dp_ftrl_restart": (
        lambda k: agg.dp_ftrl_aggregator(0.5, 6, 1.0, restart_rounds=k),
        3,
        np.int64(3),
        "restart_rounds",
    ),
    "zeroed": (lambda n: agg.zeroed(n, agg.mean()), 2, np.int16(2), "norm"),
    "attacked": (
        lambda f: agg.attacked(agg.mean(), f, "sign_flip", fixed_per_client=False),
        0.5,
        np.float64(0.5),
        "fraction",
    ),
}
REFUSED = {"True": True, "0-d array": np.array(1), "string": "1"}


def _round(aggregator):
    rng = np.random.default_rng(0)
    values = {"w": rng.normal(size=(6, 8)).astype(np.float32)}
    value, _, metrics, _ = run_round(aggregator, [contributions(values)])
    return value, metrics


@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_a_numpy_scalar_aggregates_as_its_python_number(name):
    build, number, twin, _ = AGGREGATORS[name]
    expected, expected_metrics = _round(build(number))
    value, metrics = _round(build(twin))
    assert_trees_all_close(value, expected, rtol=0, atol=0)
    assert jax.tree.map(np.asarray, metrics).keys() == expected_metrics.keys()


@pytest.mark.parametrize("refused", sorted(REFUSED))
@pytest.mark.parametrize("name", sorted(AGGREGATORS))
def test_bools_arrays_and_strings_are_refused_by_name(name, refused):
    build, _, _, argument = AGGREGATORS[name]
    with pytest.raises(ValueError, match=argument):
        build(REFUSED[refused])


def test_the_accountant_and_the_algorithms_take_numpy_scalars():
    pytest.importorskip("dp_accounting")
    kwargs = {"noise_multiplier": 1.0, "sampling_probability": 0.01}
    python = privacy.accountant(**kwargs, population=1000).epsilon(10)
    numpy = privacy.accountant(
        noise_multiplier=1.0, sampling_probability=np.float32(0.01), population=np.int64(1000)
    ).epsilon(np.int64(10))
    assert numpy == pytest.approx(python, rel=1e-6)  # q passes through float32
    tree = privacy.tree_accountant(np.float32(4.0), np.int64(10), population=np.int64(1000))
    assert tree.epsilon(np.int64(25)) == privacy.tree_accountant(4.0, 10, 1e-3).epsilon(25)
    assert alg.adaptive_server_optimizer("adam", np.float32(0.01), np.float64(0.9)) is not None
    with pytest.raises(ValueError, match="beta1"):
        alg.adaptive_server_optimizer("adam", 0.01, True)
