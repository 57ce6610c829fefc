"""Milliseconds per client-step of each way to run a chunk, XLA:CPU tuning on and off.

    python benchmarks/runner_steps.py                          # models A and D, 2 repeats
    python benchmarks/runner_steps.py --models B --clients 16 --modes sequential vmap_scan_u1

A chunk is ``--clients`` clients of ``--steps`` steps each, on the protocol's
model and batch size (random data). Every mode runs the wrapped model's
public ``train_step`` (what the engine's client step does), and is timed after
one compiling call, until ``--min-seconds`` have passed (at least once):

  sequential    one jitted step per call, the host loops over clients and steps
                (the engine's 'sequential' runner)
  unrollG       one call per step runs G clients written out one after another
                (the engine's 'unroll' runner with group_size=G)
  vmap_step     one call per step, vmapped over all clients (host-driven vmap)
  vmap_scan_uK  one call per chunk: vmap over clients of a lax.scan over steps
                with unroll=K (the engine's 'vmap' runner is K=1)
  scan_uK       one call per client: lax.scan over its steps, unroll=K

XLA reads XLA_FLAGS once per process, so each (model, tuning) pair runs in a
subprocess: tuning 'on' is the default `import fedjax_keras` (which sets
``--xla_cpu_experimental_ynn_fusion_type=`` on a CPU), 'off' sets
``FEDJAX_KERAS_XLA_TUNING=0``. Pairs alternate on/off, so both see the same
machine load; quote the same-run ratios.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("KERAS_BACKEND", "jax")  # _machine() imports keras

MODES = (
    "sequential",
    "unroll2",
    "unroll4",
    "vmap_step",
    "vmap_scan_u1",
    "vmap_scan_u2",
    "vmap_scan_u4",
    "vmap_scan_u8",
    "scan_u8",
)


def _programs(model):
    """(one client-step, one client's scan over its steps) of ``model``'s train_step."""
    import jax

    def step(weights, opt_state, batch, key):
        weights, opt_state, _ = model.train_step(weights, opt_state, batch, rng=key)
        return weights, opt_state

    def scan_client(weights, opt_state, batches, keys, unroll):
        def body(carry, xs):
            return step(*carry, *xs), None

        return jax.lax.scan(body, (weights, opt_state), (batches, keys), unroll=unroll)[0]

    return step, scan_client


def run_child(model_name: str, clients: int, steps: int, modes, min_seconds: float) -> dict:
    import jax
    import jax.numpy as jnp
    import keras
    import numpy as np
    import optax
    from protocols import PROTOCOLS

    import fedjax_keras  # first: sets the XLA:CPU tuning unless opted out

    protocol = PROTOCOLS[model_name]
    keras.utils.set_random_seed(0)
    net = protocol.make_model()
    b = protocol.batch_size
    example_shape = tuple(net.input_shape[1:])
    num_classes = int(net.output_shape[-1])
    model = fedjax_keras.from_keras_model(
        net,
        {"x": np.zeros((1,) + example_shape, np.float32), "y": np.zeros((1,), np.int32)},
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        optimizer=optax.sgd(protocol.client_lr),
    )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(clients, steps, b) + example_shape).astype(np.float32)
    y = rng.integers(0, num_classes, size=(clients, steps, b)).astype(np.int32)
    mask = np.ones((clients, steps, b), bool)
    data = jax.device_put({"x": x, "y": y, "mask": mask})
    keys = jax.random.split(jax.random.PRNGKey(0), clients * steps).reshape(clients, steps, -1)
    w0 = model.initial_weights
    o0 = model.init_optimizer_state(w0)
    step, scan_client = _programs(model)

    def at(c, s):
        return jax.tree.map(lambda a: a[c, s], data), keys[c, s]

    def stack(tree, n):
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + a.shape), tree)

    def make(mode):
        """(one chunk callable, client-steps per chunk)."""
        if mode == "sequential":
            f = jax.jit(step)
            batches = [[at(c, s) for s in range(steps)] for c in range(clients)]

            def run():
                out = []
                for c in range(clients):
                    w, o = w0, o0
                    for batch, key in batches[c]:
                        w, o = f(w, o, batch, key)
                    out.append(w)
                return out

            return run
        if mode.startswith("unroll"):
            g = int(mode[len("unroll") :])
            assert clients % g == 0, f"{mode} needs --clients divisible by {g}"

            def group_step(ws, os_, batches, ks):
                return tuple(zip(*(step(ws[i], os_[i], batches[i], ks[i]) for i in range(g))))

            f = jax.jit(group_step)
            groups = [
                [tuple(zip(*(at(c, s) for c in range(start, start + g)))) for s in range(steps)]
                for start in range(0, clients, g)
            ]

            def run():
                out = []
                for group in groups:
                    ws, os_ = (w0,) * g, (o0,) * g
                    for batches, ks in group:
                        ws, os_ = f(ws, os_, batches, ks)
                    out.append(ws)
                return out

            return run
        if mode == "vmap_step":
            f = jax.jit(jax.vmap(step))
            per_step = [
                (jax.tree.map(lambda a, s=s: a[:, s], data), keys[:, s]) for s in range(steps)
            ]

            def run():
                w, o = stack(w0, clients), stack(o0, clients)
                for batch, key in per_step:
                    w, o = f(w, o, batch, key)
                return w

            return run
        if mode.startswith("vmap_scan_u"):
            k = int(mode[len("vmap_scan_u") :])
            f = jax.jit(
                jax.vmap(
                    lambda w, o, bt, kt: scan_client(w, o, bt, kt, k), in_axes=(None, None, 0, 0)
                )
            )
            return lambda: f(w0, o0, data, keys)
        if mode.startswith("scan_u"):
            k = int(mode[len("scan_u") :])
            f = jax.jit(lambda w, o, bt, kt: scan_client(w, o, bt, kt, k))
            per_client = [
                (jax.tree.map(lambda a, c=c: a[c], data), keys[c]) for c in range(clients)
            ]
            return lambda: [f(w0, o0, bt, kt) for bt, kt in per_client]
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")

    results = {}
    for mode in modes:
        run = make(mode)
        start = time.perf_counter()
        jax.block_until_ready(run())  # compiles
        first = time.perf_counter() - start
        times, cpu_times = [], []
        began = time.perf_counter()
        while not times or (time.perf_counter() - began < min_seconds and len(times) < 5):
            start, cpu_start = time.perf_counter(), time.process_time()
            jax.block_until_ready(run())
            times.append(time.perf_counter() - start)
            cpu_times.append(time.process_time() - cpu_start)
        per_step = statistics.median(times) / (clients * steps)
        cpu_per_step = statistics.median(cpu_times) / (clients * steps)
        results[mode] = {
            "ms_per_client_step": 1e3 * per_step,
            "cpu_ms_per_client_step": 1e3 * cpu_per_step,
            "first_call_s": first,
        }
        print(
            f"  {model_name} {mode} ({os.environ.get('FEDJAX_KERAS_XLA_TUNING')}): "
            f"{1e3 * per_step:.2f} ms per client-step ({1e3 * cpu_per_step:.2f} ms CPU time), "
            f"first call {first:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return {
        "model": model_name,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "tuning": fedjax_keras._xla_tuning.status,
        "modes": results,
    }


def _ms(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["A", "D"])
    parser.add_argument("--modes", nargs="+", default=list(MODES))
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=3.0)
    parser.add_argument("--tuning", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_child(args.child, args.clients, args.steps, args.modes, args.min_seconds)
        print("RESULT " + json.dumps(result), flush=True)
        return
    from run import _machine

    print("machine:", _machine(), flush=True)
    print(f"load before: {os.getloadavg()}", flush=True)
    runs = []
    for repeat in range(args.repeats):
        for model_name in args.models:
            for tuning in args.tuning:
                env = dict(os.environ)
                env.pop("XLA_FLAGS", None)
                env["FEDJAX_KERAS_XLA_TUNING"] = "1" if tuning == "on" else "0"
                command = [sys.executable, __file__, "--child", model_name]
                command += ["--clients", str(args.clients), "--steps", str(args.steps)]
                command += ["--min-seconds", str(args.min_seconds), "--modes", *args.modes]
                print(f"repeat {repeat}, model {model_name}, tuning {tuning}", flush=True)
                # The child's per-mode lines go straight to stderr, as they come.
                done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    print(f"failed (exit {done.returncode})", flush=True)
                    continue
                result = json.loads(lines[-1][len("RESULT ") :])
                result.update(repeat=repeat, tuning=tuning)
                runs.append(result)
                if args.json:  # after every child, so an interrupted run keeps its results
                    args.json.write_text(json.dumps({"runs": runs}, indent=1))
    print(f"load after: {os.getloadavg()}", flush=True)
    for key, what in (("ms_per_client_step", "wall"), ("cpu_ms_per_client_step", "CPU")):
        print(
            f"\n{args.clients} clients x {args.steps} steps; {what} ms per client-step "
            "(CPU time: all the process's threads), median of repeats"
        )
        header = "| mode |" + "".join(f" {m} on | {m} off | {m} off/on |" for m in args.models)
        print(header)
        print("|---|" + "---|---|---|" * len(args.models))
        for mode in args.modes:
            cells = []
            for model_name in args.models:
                per = {}
                for tuning in ("on", "off"):
                    values = [
                        r["modes"][mode][key]
                        for r in runs
                        if r["model"] == model_name and r["tuning"] == tuning
                    ]
                    per[tuning] = statistics.median(values) if values else None
                ratio = per["off"] / per["on"] if per["on"] and per["off"] else None
                cells += [
                    _ms(per["on"]),
                    _ms(per["off"]),
                    "-" if ratio is None else f"{ratio:.2f}x",
                ]
            print(f"| {mode} | " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps({"machine": _machine(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
