"""A sweep of K runs of Protocol B (softmax regression, 100 clients per round) in one program,
against the same K runs one after another.

    python benchmarks/sweep.py [--runs 8] [--rounds 6]

Prints the machine, the versions, and for both ways: compile-and-first-round
seconds, steady seconds per round of all K runs (median of rounds 1..N-1),
and their ratio. Both ways train the same runs (the check at the end compares
run 0's weights).
"""

import argparse
import os
import platform
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax
import keras
import numpy as np
import optax
from protocols import DATA_DIR, ensure_data

import fedjax_keras as fk


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    ensure_data()
    arrays = np.load(DATA_DIR / "synthetic_small.npz")
    data = fk.FederatedData.from_arrays(arrays["x"], arrays["y"], arrays["client_offsets"])
    net = keras.Sequential([keras.Input((60,)), keras.layers.Dense(10)])
    model = fk.from_keras_model(
        net,
        data.client(0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    seeds = list(range(args.runs))
    rates = list(np.geomspace(0.003, 0.1, args.runs))
    cohorts = [
        data.subset(np.random.default_rng(r).choice(1000, 100, replace=False))
        for r in range(args.rounds)
    ]
    engine = {"batch_size": 10, "runner": "vmap"}

    def timed(step, state):
        times = []
        for cohort in cohorts:
            begin = time.perf_counter()
            state = step(state, cohort)
            jax.block_until_ready(state)
            times.append(time.perf_counter() - begin)
        return state, times[0], float(np.median(times[1:]))

    sweep = fk.sweep(
        lambda c, s: fk.algorithms.build_weighted_fed_avg(model, c, s, **engine), seeds, rates
    )
    sweep_states, sweep_first, sweep_round = timed(
        lambda s, c: sweep.next(s, c).state, sweep.initialize()
    )
    separate_first, separate_round = 0.0, 0.0
    for k in seeds:
        process = fk.algorithms.build_weighted_fed_avg(
            model, optax.sgd(rates[k]), optax.sgd(1.0), **engine
        )
        state, first, per_round = timed(
            lambda s, c, p=process: p.next(s, c).state, process.initialize(k)
        )
        separate_first += first
        separate_round += per_round
        if k == 0:
            run0 = state
    fk.testing.assert_trees_all_close(
        sweep.run_state(sweep_states, 0).model, run0.model, rtol=1e-5, atol=1e-6
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} ({jax.default_backend()}), keras {keras.__version__}"
    )
    print(f"| way | first round (compile) s | s/round, all {args.runs} runs |")
    print("|---|---|---|")
    print(f"| one sweep | {sweep_first:.2f} | {sweep_round:.4f} |")
    print(f"| {args.runs} separate runs | {separate_first:.2f} | {separate_round:.4f} |")
    print(
        f"sweep / separate: first round {sweep_first / separate_first:.2f}x, "
        f"steady rounds {sweep_round / separate_round:.2f}x"
    )


if __name__ == "__main__":
    main()
