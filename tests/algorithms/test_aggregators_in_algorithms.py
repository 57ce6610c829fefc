"""End to end: the privacy, robustness and compression aggregators in every algorithm,
under both executors and sharded over several (fake CPU) devices, give the same numbers."""

import os
import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from engine_reference import make_clients, wrap

import fedjax_keras
from fedjax_keras import aggregation as agg
from fedjax_keras.testing import toy_models

# The workers and shared references live in tests/, one folder up.
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [4, 5, 6, 4, 5, 6, 5, 4, 6, 5, 4, 6]  # two steps of 3 each: one compiled shape


def _composite():
    """Every kind of part at once: client rows (roles, residuals), a stacked inner, noise."""
    return agg.attacked(agg.top_k(20, agg.median()), 0.3, "sign_flip", 2.0)


BUILDERS = {
    "fed_avg": lambda model, a, **e: fedjax_keras.algorithms.build_weighted_fed_avg(
        model, optax.sgd(0.1), aggregator=a, **e
    ),
    "fed_avg_average": lambda model, a, **e: fedjax_keras.algorithms.build_unweighted_fed_avg(
        model, optax.sgd(0.1), non_trainable="average", aggregator=a, **e
    ),
    "fed_prox": lambda model, a, **e: fedjax_keras.algorithms.build_fed_prox(
        model, optax.sgd(0.1), mu=0.1, aggregator=a, **e
    ),
    "fed_sgd": lambda model, a, **e: fedjax_keras.algorithms.build_fed_sgd(
        model, optax.sgd(0.5), aggregator=a, **e
    ),
    "scaffold": lambda model, a, **e: fedjax_keras.algorithms.build_scaffold(
        model, 0.1, aggregator=a, **e
    ),
}
AGGREGATORS = {
    "dp": lambda: agg.dp_aggregator(0.1, clients_per_round=6, clip=0.5),
    "trimmed_mean": lambda: agg.clipped(1.0, agg.trimmed_mean(0.2)),
    "composite": _composite,
    "quantized_krum": lambda: agg.quantized(6, agg.krum(1, 2), rotation=True),
}


@pytest.fixture(scope="module")
def model():
    return wrap(toy_models.mlp(seed=3))


def _train(model, builder, aggregator, rounds=2, **engine):
    data = make_clients(SIZES, seed=7)
    process = BUILDERS[builder](model, aggregator, batch_size=3, chunk_size=4, **engine)
    state = process.initialize(0)
    for r in range(rounds):
        out = process.next(state, data.sample_clients(6, seed=r))
        state = out.state
    return state, out.metrics


@pytest.mark.parametrize(
    "builder, aggregator",
    [
        ("fed_avg", "dp"),
        ("fed_avg_average", "trimmed_mean"),
        ("fed_prox", "quantized_krum"),
        ("fed_sgd", "composite"),
    ],
)
def test_every_algorithm_takes_the_new_aggregators(model, builder, aggregator):
    state, metrics = _train(model, builder, AGGREGATORS[aggregator]())
    initial = model.initial_weights.trainable
    for name, leaf in state.model.trainable.items():
        assert np.all(np.isfinite(leaf)) and not np.allclose(leaf, initial[name]), name
    assert metrics["server_update_nonfinite"] == 0 and metrics["num_clients"] == 6
    expected = {
        "dp": "dp/noise_stddev",
        "trimmed_mean": "clip/clipped_fraction",
        "composite": "attack/malicious_fraction",
        "quantized_krum": "krum/selected",
    }[aggregator]
    assert expected in metrics
    if aggregator == "composite":
        roles = np.asarray(state.client_states.rows["aggregator"]["role"])
        assert set(roles[np.asarray(state.client_states.seen)].tolist()) == {1, 2}


@pytest.fixture(scope="module")
def scaffold_vmapped(model):
    """SCAFFOLD (its own client rows) with the composite (the aggregator's), vmapped."""
    return _train(model, "scaffold", _composite(), runner="vmap")


def test_scaffold_keeps_its_rows_and_the_aggregators_side_by_side(scaffold_vmapped):
    state, metrics = scaffold_vmapped
    assert metrics["server_update_nonfinite"] == 0 and "attack/malicious_fraction" in metrics
    table = state.client_states
    seen = np.asarray(table.seen)
    assert seen.sum() > 6  # two cohorts of 6 overlap only in part
    roles = np.asarray(table.rows["aggregator"]["delta"]["role"])[seen]
    assert set(roles.tolist()) == {1, 2}
    residuals = table.rows["aggregator"]["delta"]["inner"]["residual"]  # attacked(top_k(..))
    assert any(np.abs(np.asarray(r)[seen]).sum() > 0 for r in jax.tree.leaves(residuals))
    assert jax.tree.leaves(table.rows["algorithm"])  # SCAFFOLD's c_i


def test_sequential_executor_gives_the_vmapped_numbers(model, scaffold_vmapped):
    vmapped, _ = scaffold_vmapped
    sequential, _ = _train(model, "scaffold", _composite(), runner="sequential")
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        (vmapped.model, vmapped.client_states),
        (sequential.model, sequential.client_states),
    )


_WORKER = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("KERAS_BACKEND", "jax")
import jax, numpy as np
import test_aggregators_in_algorithms as t
from engine_reference import wrap
from fedjax_keras.testing import toy_models
assert jax.device_count() == 2
state, _ = t._train(wrap(toy_models.mlp(seed=3)), "scaffold", t._composite(), runner="vmap")
leaves = jax.tree.leaves((state.model, state.client_states))
np.savez(sys.argv[1], *[np.asarray(leaf) for leaf in leaves])
"""


@pytest.mark.slow
def test_two_devices_give_the_numbers_of_one(scaffold_vmapped, tmp_path):
    out = tmp_path / "two.npz"
    this_folder = os.path.dirname(os.path.abspath(__file__))  # the worker imports this module
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([this_folder, HERE, os.path.dirname(HERE)])}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", _WORKER, str(out)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    one, _ = scaffold_vmapped
    two = np.load(out)
    leaves = jax.tree.leaves((one.model, one.client_states))
    assert len(leaves) == len(two.files)
    for index, leaf in enumerate(leaves):
        np.testing.assert_allclose(two[f"arr_{index}"], leaf, rtol=1e-5, atol=1e-6)
