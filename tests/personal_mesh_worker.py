"""Runs Ditto, HypCluster and agnostic FedAvg for a few rounds in a fresh process.

Usage: python personal_mesh_worker.py OUT.npz DEVICES

Forces DEVICES CPU devices (before JAX starts) and writes every final state
leaf, the last round's per-client reports and the compile count after each
round to OUT.npz, for test_personal_mesh.py.
"""

import os
import sys

out_path, devices = sys.argv[1], int(sys.argv[2])
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from engine_reference import make_clients, wrap  # noqa: E402

import fedjax_keras as fk  # noqa: E402
from fedjax_keras.testing import toy_models  # noqa: E402

ROUNDS = 3
compiles = []


def _listen(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        compiles.append(1)


jax.monitoring.register_event_duration_secs_listener(_listen)
data = make_clients([6, 3, 8, 5, 2, 7, 4, 6, 9, 1, 5, 4], seed=8)
dropout = wrap(toy_models.mlp(dropout=0.5, seed=5))
plain = wrap(toy_models.mlp(seed=6))
engine = {"batch_size": 3, "chunk_size": 4, "runner": "vmap", "step_buckets": [4]}
builders = {
    "ditto": lambda: fk.algorithms.build_ditto(
        dropout, optax.sgd(0.1), lam=0.5, population_size=data.num_clients, **engine
    ),
    "hypcluster": lambda: fk.algorithms.build_hyp_cluster(
        plain, optax.sgd(0.1), num_clusters=2, init_noise=0.5, **engine
    ),
    "agnostic": lambda: fk.algorithms.build_agnostic_fed_avg(
        plain, optax.sgd(0.1), domain_learning_rate=0.5, **engine
    ),
}
results = {}
for name, build in builders.items():
    process = build()
    state = process.initialize(0)
    counts = []
    for round_num in range(ROUNDS):
        out = process.next(state, data.sample_clients(6, seed=round_num))
        state = out.state
        jax.block_until_ready(state)
        counts.append(len(compiles))
    results[f"{name}/compiles"] = np.array(counts)
    results[f"{name}/devices"] = np.array(process.placement.num_devices)
    for i, leaf in enumerate(jax.tree.leaves(state)):
        results[f"{name}/leaf{i:03d}"] = np.asarray(leaf)
    for key, value in out.metrics.items():
        if key.startswith("clients/") or key.startswith("domain_"):
            results[f"{name}/leaf_{key}"] = np.asarray(value)
np.savez(out_path, **results)
