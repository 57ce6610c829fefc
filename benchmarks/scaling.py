"""Protocol C (softmax regression, cohorts of 1,000 and 10,000 clients) on 1, 2 and 4
devices and on 1 and 2 processes: seconds per round, peak memory per process, efficiency.

    python benchmarks/scaling.py [--cohorts 1000 10000] [--rounds 4]

Every setting runs in fresh processes: forced CPU devices
(``XLA_FLAGS=--xla_force_host_platform_device_count=N``) when there is no
accelerator, and ``fedjax_keras.parallel.initialize`` on 127.0.0.1 for two
processes. On a machine with fewer cores than devices the devices share the
cores, so the table shows correctness (every setting's final weights equal
one device's to 1e-5) and overhead, not speed-up; the efficiency column is
(one device's seconds) / (this setting's seconds x devices).
"""

import argparse
import json
import os
import resource
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SETTINGS = [(1, 1), (2, 1), (4, 1), (1, 2)]  # (devices per process, processes)


def _child(cohort: int, rounds: int, out: str, process_id: int, processes: int, port: int):
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import fedjax_keras as fk

    if processes > 1:
        fk.parallel.initialize(f"127.0.0.1:{port}", processes, process_id)
    import jax
    import keras
    import numpy as np
    import optax

    sys.path.insert(0, HERE)
    from protocols import PROTOCOLS, load

    protocol = PROTOCOLS["C1000"]
    x, y, offsets = load(protocol)
    data = fk.FederatedData.from_arrays(x, y, offsets)
    net = keras.Sequential([keras.Input((60,)), keras.layers.Dense(10, kernel_initializer="zeros")])
    model = fk.from_keras_model(
        net, data.client(0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    process = fk.algorithms.build_weighted_fed_avg(
        model, optax.sgd(0.01), optax.sgd(1.0), batch_size=10, chunk_size=256, runner="vmap"
    )
    state = process.initialize(0)
    times = []
    for r in range(rounds):
        positions = np.random.default_rng(r).choice(1000, cohort, replace=cohort > 1000)
        begin = time.perf_counter()
        state = process.next(state, data.subset(positions)).state
        jax.block_until_ready(state.model)
        times.append(time.perf_counter() - begin)
    if process_id == 0:
        kernel = np.asarray(state.model.trainable["dense/kernel"])
        with open(out, "w") as f:
            json.dump(
                {
                    "seconds_per_round": float(np.median(times[1:])),
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "devices": jax.device_count(),
                    "kernel": kernel.tolist(),
                },
                f,
            )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(devices: int, processes: int, cohort: int, rounds: int, out: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    port = _free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--child",
                str(cohort),
                str(rounds),
                out,
                str(pid),
                str(processes),
                str(port),
            ],
            env=env,
        )
        for pid in range(processes)
    ]
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"setting {devices} devices x {processes} processes failed")
    with open(out) as f:
        return json.load(f)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        cohort, rounds, out, pid, processes, port = sys.argv[2:8]
        _child(int(cohort), int(rounds), out, int(pid), int(processes), int(port))
        return
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cohorts", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--out", default="/tmp/fedjax_keras_scaling.json")
    args = parser.parse_args()
    import numpy as np

    print(f"machine: {os.cpu_count()} cores; load average {os.getloadavg()[0]:.1f}")
    print(
        "| cohort | devices x processes | s/round | peak RSS per process | efficiency | "
        "weights = 1 device |"
    )
    print("|---|---|---|---|---|---|")
    for cohort in args.cohorts:
        base = None
        for devices, processes in SETTINGS:
            row = _run(devices, processes, cohort, args.rounds, args.out)
            if base is None:
                base = row
            same = np.allclose(row["kernel"], base["kernel"], rtol=1e-5, atol=1e-5)
            total = devices * processes
            efficiency = base["seconds_per_round"] / (row["seconds_per_round"] * total)
            print(
                f"| {cohort:,} | {devices} x {processes} | {row['seconds_per_round']:.3f} | "
                f"{row['peak_rss_mib']:.0f} MiB | {efficiency:.2f} | {'yes' if same else 'NO'} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
