"""Runs FedAvg, SCAFFOLD and FedBN for a few rounds in a fresh process, for test_parallel.py.

Usage: python parallel_worker.py OUT.npz DEVICES RUNNER [PROCESS_ID NUM_PROCESSES PORT]

Forces DEVICES CPU devices (before JAX starts), optionally joins a
multi-process run on 127.0.0.1:PORT, and writes every final state leaf and
the compile count after each round to OUT.npz (process 0 only).
"""

import os
import sys

out_path, devices, runner = sys.argv[1], int(sys.argv[2]), sys.argv[3]
process_id, num_processes, port = (int(a) for a in (sys.argv[4:7] or ("0", "1", "0")))
os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
os.environ.setdefault("KERAS_BACKEND", "jax")

import fedjax_keras as fk  # noqa: E402

if num_processes > 1:
    fk.parallel.initialize(f"127.0.0.1:{port}", num_processes=num_processes, process_id=process_id)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from engine_reference import make_clients, wrap  # noqa: E402

from fedjax_keras.testing import toy_models  # noqa: E402

ROUNDS = 4
compiles = []


def _listen(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        compiles.append(1)


jax.monitoring.register_event_duration_secs_listener(_listen)
data = make_clients([6, 3, 8, 5, 2, 7, 4, 6, 9, 1, 5, 4], seed=7)
dropout = wrap(toy_models.mlp(dropout=0.5, seed=3))
batch_norm = wrap(toy_models.mlp(batch_norm=True, seed=4))
engine = {"batch_size": 3, "chunk_size": 4, "runner": runner, "step_buckets": [4]}
builders = {
    "fedavg": lambda: fk.algorithms.build_weighted_fed_avg(dropout, optax.sgd(0.1), **engine),
    "scaffold": lambda: fk.algorithms.build_scaffold(
        dropout, 0.1, population_size=data.num_clients, **engine
    ),
    "fedbn": lambda: fk.algorithms.build_weighted_fed_avg(
        batch_norm, optax.sgd(0.1), non_trainable="per_client", population_size=12, **engine
    ),
}
results = {}
for name, build in builders.items():
    process = build()
    state = process.initialize(0)
    counts = []
    for round_num in range(ROUNDS):
        cohort = data.sample_clients(6, seed=round_num)
        state = process.next(state, cohort).state
        jax.block_until_ready(state)
        counts.append(len(compiles))
    results[f"{name}/compiles"] = np.array(counts)
    results[f"{name}/devices"] = np.array(process.placement.num_devices)
    for i, leaf in enumerate(jax.tree.leaves(state)):
        results[f"{name}/leaf{i:03d}"] = np.asarray(leaf)
if process_id == 0:
    np.savez(out_path, **results)
