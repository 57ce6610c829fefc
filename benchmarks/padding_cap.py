"""Round time when batch_size exceeds every client, batch width capped or not.

    python benchmarks/padding_cap.py

Protocol B's model (Dense(10) on 60 features), clients of 10 examples, 20
clients per round, FedAvg with the 'vmap' runner: batch_size 10 (no padding
in the batch), and batch_size 1000 with the batch axis capped at the largest
client (plan_cohort's default) or padded to 1000 (``cap_batch=False``), then
batch_size 10**7 on 60 examples (capped only: uncapped it needed 6.6 GB).
One warm-up round, then the median of 5 rounds; all rows in one process.
"""

import functools
import os
import statistics
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras
import numpy as np
import optax

import fedjax_keras as fk
from fedjax_keras.data import plan_cohort
from fedjax_keras.engine import _plan


def clients(num_clients: int, size: int) -> fk.data.FederatedData:
    rng = np.random.default_rng(0)
    n = num_clients * size
    x = rng.normal(size=(n, 60)).astype(np.float32)
    y = rng.integers(0, 10, size=n).astype(np.int32)
    return fk.data.FederatedData.from_arrays(x, y, np.arange(0, n + 1, size))


def median_round(data, cohort: int, batch_size: int, cap_batch: bool) -> tuple[float, float]:
    # The engine does not expose cap_batch (it always caps); patch its planner for
    # the uncapped baseline.
    _plan.plan_cohort = functools.partial(plan_cohort, cap_batch=cap_batch)
    model = fk.from_keras_model(
        keras.Sequential([keras.Input((60,)), keras.layers.Dense(10)]),
        {"x": np.zeros((1, 60), np.float32), "y": np.zeros((1,), np.int32)},
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    process = fk.algorithms.build_weighted_fed_avg(
        model, optax.sgd(0.01), batch_size=batch_size, runner="vmap"
    )
    state = process.initialize(seed=0)
    times = []
    for r in range(6):
        start = time.perf_counter()
        out = process.next(state, data.sample_clients(cohort, seed=r))
        jax.block_until_ready(out.state.model)
        times.append(time.perf_counter() - start)
        state = out.state
    return statistics.median(times[1:]), out.metrics["padding_fraction"]


def main():
    print(f"load average before: {os.getloadavg()}")
    small = clients(100, 10)
    rows = [
        ("100 clients of 10, cohort 20", 10, True, small, 20),
        ("100 clients of 10, cohort 20", 1000, True, small, 20),
        ("100 clients of 10, cohort 20", 1000, False, small, 20),
        ("6 clients of 10 (60 examples)", 10**7, True, clients(6, 10), 6),
    ]
    print("| data | batch_size | batch axis | ms/round (median) | padding |")
    print("|---|---|---|---|---|")
    for name, batch_size, cap, data, cohort in rows:
        seconds, padding = median_round(data, cohort, batch_size, cap)
        width = "capped" if cap else "batch_size"
        print(f"| {name} | {batch_size:,} | {width} | {1e3 * seconds:.1f} | {padding:.3f} |")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
