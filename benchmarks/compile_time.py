"""Where a first FedAvg round's seconds go: compilation per program, against Keras.

    python benchmarks/compile_time.py --model dense_chain --layers 150
    python benchmarks/compile_time.py --model mobilenet_v2 --json out.json

Builds one model (``dense_chain``: ``--layers`` Dense(16) layers and a
Dense(10) head, two weight tensors each, a cheap probe of how compilation
grows with the number of weight tensors; ``mobilenet_v2`` / ``resnet50``:
``keras.applications`` with random weights on 32x32x3 inputs, 10 classes)
and times, in this one process:

- **keras**: Keras' own first ``train_on_batch`` on the compiled model (SGD,
  the same loss and batch), compilation included: the reference;
- **first round**: the first ``process.next`` of ``build_weighted_fed_avg``
  (``--clients`` clients of ``--steps`` batches of ``--batch`` examples),
  until the new server weights are ready;
- **second round**: the same round again, nothing left to compile.

Every JAX compilation is attributed to its program's name through
``jax.monitoring`` (tracing, lowering to MLIR, XLA compilation), so the
table says which program the seconds went to. ``--compile-cache DIR`` turns
on JAX's persistent compilation cache in DIR: a second invocation with the
same DIR shows what a later process pays.
"""

import argparse
import collections
import json
import os
import platform
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

import fedjax_keras as fk  # noqa: E402

MODELS = ("dense_chain", "mobilenet_v2", "resnet50")
_PHASES = {
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "xla",
}


class CompileLog:
    """Seconds per (stage, program, phase), from ``jax.monitoring`` events."""

    def __init__(self):
        self.stage = "setup"
        self.seconds = collections.defaultdict(float)
        self.counts = collections.Counter()
        jax.monitoring.register_event_duration_secs_listener(self._record)

    def _record(self, event, duration, fun_name="?", **kwargs):
        phase = _PHASES.get(event)
        if phase is not None:
            # Tracing names the function, lowering and compiling name it jit(...).
            name = str(fun_name).removeprefix("jit(").removesuffix(")")
            self.seconds[(self.stage, name, phase)] += duration
            if phase == "xla":
                self.counts[(self.stage, name)] += 1

    def programs(self, stage):
        """[(program, calls, trace s, lower s, xla s)], most XLA seconds first."""
        names = {name for (s, name, _) in self.seconds if s == stage}
        rows = [
            (
                name,
                self.counts[(stage, name)],
                *(self.seconds[(stage, name, phase)] for phase in ("trace", "lower", "xla")),
            )
            for name in names
        ]
        return sorted(rows, key=lambda row: -row[4])


def build_keras_model(name: str, layers: int) -> keras.Model:
    keras.utils.set_random_seed(0)
    if name == "dense_chain":
        return keras.Sequential(
            [keras.Input((16,))]
            + [keras.layers.Dense(16, activation="relu") for _ in range(layers)]
            + [keras.layers.Dense(10)]
        )
    application = {
        "mobilenet_v2": keras.applications.MobileNetV2,
        "resnet50": keras.applications.ResNet50,
    }[name]
    return application(
        input_shape=(32, 32, 3), weights=None, classes=10, classifier_activation=None
    )


def example_arrays(name: str, count: int):
    rng = np.random.default_rng(0)
    shape = (16,) if name == "dense_chain" else (32, 32, 3)
    x = rng.random((count,) + shape, dtype=np.float32)
    return x, rng.integers(0, 10, count).astype(np.int32)


def _loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def keras_first_batch(args, log: CompileLog, x, y) -> dict:
    """Seconds of Keras' first and second ``train_on_batch`` (the reference)."""
    net = build_keras_model(args.model, args.layers)
    net.compile(optimizer=keras.optimizers.SGD(0.01), loss=_loss())
    xb, yb = x[: args.batch], y[: args.batch]
    times = []
    for stage in ("keras first", "keras second"):
        log.stage = stage
        start = time.perf_counter()
        net.train_on_batch(xb, yb)
        times.append(time.perf_counter() - start)
    log.stage = "setup"
    return {"keras_first_s": times[0], "keras_second_s": times[1]}


def fedavg_rounds(args, log: CompileLog, x, y) -> dict:
    """Seconds of the first and second FedAvg rounds, and the process's runner."""
    net = build_keras_model(args.model, args.layers)
    weights = len(net.trainable_weights) + len(net.non_trainable_weights)
    model = fk.from_keras_model(net, {"x": x[:2], "y": y[:2]}, loss=_loss())
    per_client = args.steps * args.batch
    offsets = np.arange(args.clients + 1) * per_client
    data = fk.data.FederatedData.from_arrays(x, y, offsets)
    process = fk.algorithms.build_weighted_fed_avg(
        model, optax.sgd(0.01), batch_size=args.batch, shuffle=False, runner=args.runner
    )
    state = process.initialize(0)
    times = []
    for stage in ("first round", "second round"):
        log.stage = stage
        start = time.perf_counter()
        out = process.next(state, data)
        jax.block_until_ready(out.state.model)
        times.append(time.perf_counter() - start)
        state = out.state
    log.stage = "setup"
    return {
        "first_round_s": times[0],
        "second_round_s": times[1],
        "runner": process.mode,
        "weight_tensors": weights,
    }


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}, "
        f"keras {keras.__version__}, python {platform.python_version()}"
    )


def print_table(log: CompileLog, row: dict) -> None:
    print(
        f"\n{row['model']} ({row['weight_tensors']} weight tensors), runner {row['runner']}, "
        f"{row['clients']} clients x {row['steps']} steps x batch {row['batch']}"
    )
    print("\n| stage | program | compiles | trace s | lower s | XLA compile s |")
    print("|---|---|---|---|---|---|")
    for stage in ("keras first", "first round"):
        for name, calls, trace, lower, xla in log.programs(stage):
            if trace + lower + xla >= 0.05:  # the many tiny helpers add nothing
                print(f"| {stage} | {name} | {calls} | {trace:.2f} | {lower:.2f} | {xla:.2f} |")
    print("\n| what | seconds |")
    print("|---|---|")
    for key in ("keras_first_s", "keras_second_s", "first_round_s", "second_round_s"):
        print(f"| {key[:-2].replace('_', ' ')} | {row[key]:.2f} |")
    print(f"\nfirst round / Keras' first train_on_batch: {row['ratio_to_keras']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=MODELS, default="dense_chain")
    parser.add_argument("--layers", type=int, default=50, help="hidden layers of dense_chain")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1, help="local steps per client")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--runner", default="auto")
    parser.add_argument("--compile-cache", metavar="DIR", help="persistent compilation cache")
    parser.add_argument("--json", metavar="FILE", help="append the result as one JSON line")
    args = parser.parse_args()
    if args.compile_cache:
        jax.config.update("jax_compilation_cache_dir", args.compile_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    print(machine(), flush=True)
    load_before = os.getloadavg()
    print(f"load average before: {load_before}", flush=True)
    log = CompileLog()
    x, y = example_arrays(args.model, args.clients * args.steps * args.batch)
    row = {"model": args.model, "clients": args.clients, "steps": args.steps, "batch": args.batch}
    if args.model == "dense_chain":
        row["layers"] = args.layers
    row.update(keras_first_batch(args, log, x, y))
    row.update(fedavg_rounds(args, log, x, y))
    row["ratio_to_keras"] = row["first_round_s"] / row["keras_first_s"]
    row["programs"] = {
        stage: [
            {"name": n, "compiles": c, "trace_s": t, "lower_s": lo, "xla_s": xs}
            for n, c, t, lo, xs in log.programs(stage)
        ]
        for stage in ("keras first", "first round", "second round")
    }
    row["compile_cache"] = bool(args.compile_cache)
    row["machine"] = machine()
    row["load_average"] = [load_before, os.getloadavg()]
    print_table(log, row)
    print(f"load average after: {os.getloadavg()}", flush=True)
    if args.json:
        with open(args.json, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    sys.exit(main())
