"""Runs the benchmark protocols for fedjax_keras and its baselines, prints one table.

    python benchmarks/run.py                       # A, B and C on every system
    python benchmarks/run.py --protocols B --systems fedjax_keras
    python benchmarks/run.py --protocols A --runner unroll --chunk-size 2

Systems, each in its own subprocess (so peak RSS and compilation caches are its own):
  fedjax_keras   build_weighted_fed_avg: chunks of clients in compiled programs,
                 cohorts taken from the population (`data.subset`).
  fedjax_keras_list  the same process, each round's cohort given as a fresh
                 list of {'x', 'y'} dicts (TFF's way of passing clients).
  sequential     a per-client Python loop over one jitted model.train_step per
                 batch (how FedJAX's default backend runs), same model wrapper.
  keras_loop     the loop a Keras user writes: set_weights / fit / get_weights
                 per client on a compiled Keras model.
  fedjax         FedJAX 0.0.17 itself (jax 0.5.3, Haiku model), protocols A and B
                 only, through shared/bench/fedjax_reference.py run with the
                 python of its own virtual environment (--fedjax-venv; created
                 with PROTOCOL.md's recipe when missing). If the install fails,
                 its rows are skipped and the output says why.

Timing follows shared/bench/PROTOCOL.md: one warm-up round, rounds 1..5 timed
(1..50 for D on an accelerator) one by one until the new server weights are
ready (sampling and batching included), medians reported; accuracy over all
examples after 10 rounds.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SYSTEMS = ("fedjax_keras", "fedjax_keras_list", "sequential", "keras_loop", "fedjax")
ACCURACY_ROUNDS = 10
HERE = Path(__file__).resolve().parent
# FedJAX's venv, as shared/bench/PROTOCOL.md gives it.
FEDJAX_PACKAGES = ["fedjax==0.0.17", "jax==0.5.3", "jaxlib==0.5.3", "dm-haiku", "optax"]
# fedjax_reference.py's --child arguments: backend, batching, devices (PROTOCOL.md:
# its plain batches for A, its fastest, padded batches, for B).
FEDJAX_CONFIGS = {"A": ["jit", "plain", "1"], "B": ["jit", "padded", "1"]}


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _loss():
    import keras

    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _accuracy(model, weights, x, y) -> float:
    import jax
    import numpy as np

    predict = jax.jit(lambda w, xb: model.apply(w, xb).argmax(-1))
    correct = 0
    for start in range(0, len(x), 2000):
        correct += int(
            (np.asarray(predict(weights, x[start : start + 2000])) == y[start : start + 2000]).sum()
        )
    return correct / len(x)


def _timed_rounds(protocol, num_rounds, run_round, info=None):
    """Calls run_round(r) for every round; returns (seconds, examples) of the timed rounds.

    The first (warm-up) round's seconds, compilation included, go to
    ``info['first_round_s']`` when ``info`` is given."""
    timed = []
    for r in range(num_rounds):
        start = time.perf_counter()
        examples = run_round(r)
        elapsed = time.perf_counter() - start
        if r == 0 and info is not None:
            info["first_round_s"] = round(elapsed, 3)
        if 1 <= r <= protocol.timed_rounds():
            timed.append((elapsed, examples))
    return timed


def run_fedjax_keras_list(protocol, args):
    return run_fedjax_keras(protocol, args, as_list=True)


def run_fedjax_keras(protocol, args, as_list=False):
    import jax
    import keras
    import optax
    from protocols import cohort_positions, load

    import fedjax_keras

    if args.compile_cache:
        # What `fedjax-keras simulate` does by default (fedjax_keras/cli/_compile_cache.py).
        jax.config.update("jax_compilation_cache_dir", str(args.compile_cache))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    x, y, offsets = load(protocol)
    data = fedjax_keras.data.FederatedData.from_arrays(x, y, offsets)
    model = fedjax_keras.from_keras_model(
        protocol.make_model(),
        {"x": x[:2], "y": y[:2]},
        loss=_loss(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    process = fedjax_keras.algorithms.build_weighted_fed_avg(
        model,
        client_optimizer=optax.sgd(protocol.client_lr),
        server_optimizer=optax.sgd(1.0),
        batch_size=protocol.batch_size,
        epochs=1,
        shuffle=True,
        runner=args.runner,
        **({} if args.chunk_size is None else {"chunk_size": args.chunk_size}),
    )
    state = [process.initialize(seed=0)]
    info = {}

    def run_round(r):
        positions = cohort_positions(protocol, r, data.num_clients)
        if as_list:
            cohort = [
                {"x": x[offsets[c] : offsets[c + 1]], "y": y[offsets[c] : offsets[c + 1]]}
                for c in positions
            ]
        else:
            cohort = data.subset(positions)
        out = process.next(state[0], cohort)
        jax.block_until_ready(out.state.model)
        state[0] = out.state
        info.update(runner=out.metrics["runner"], padding=round(out.metrics["padding_fraction"], 3))
        return out.metrics["num_examples"]

    timed = _timed_rounds(protocol, args.rounds, run_round, info)
    accuracy = _accuracy(model, state[0].model, x, y) if args.rounds >= ACCURACY_ROUNDS else None
    return timed, accuracy, info


def run_sequential(protocol, args):
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from protocols import cohort_positions, load

    import fedjax_keras

    x, y, offsets = load(protocol)
    model = fedjax_keras.from_keras_model(
        protocol.make_model(),
        {"x": x[:2], "y": y[:2]},
        loss=_loss(),
        optimizer=optax.sgd(protocol.client_lr),
    )
    b = protocol.batch_size
    step = jax.jit(model.train_step)
    add_scaled = jax.jit(
        lambda acc, w, s, n: jax.tree.map(lambda a, wi, si: a + n * (wi - si), acc, w, s)
    )
    finish = jax.jit(lambda s, acc, total: jax.tree.map(lambda si, a: si + a / total, s, acc))
    server = [model.initial_weights]
    rng = np.random.default_rng(0)
    key = jax.random.PRNGKey(0)

    def run_round(r):
        acc = jax.tree.map(jnp.zeros_like, server[0].trainable)
        total = 0
        for c in cohort_positions(protocol, r, len(offsets) - 1):
            lo, hi = offsets[c], offsets[c + 1]
            order = lo + rng.permutation(hi - lo)
            weights = server[0]
            opt_state = model.init_optimizer_state(weights)
            for i, start in enumerate(range(0, len(order), b)):
                rows = order[start : start + b]
                pad = b - len(rows)
                xb = np.concatenate([x[rows], np.zeros((pad,) + x.shape[1:], x.dtype)])
                yb = np.concatenate([y[rows], np.zeros((pad,), y.dtype)])
                mask = np.arange(b) < len(rows)
                weights, opt_state, _ = step(
                    weights,
                    opt_state,
                    {"x": xb, "y": yb, "mask": mask},
                    rng=jax.random.fold_in(key, r * 1_000_003 + int(c) * 1000 + i),
                )
            n = hi - lo
            acc = add_scaled(acc, weights.trainable, server[0].trainable, jnp.float32(n))
            total += n
        server[0] = server[0]._replace(
            trainable=finish(server[0].trainable, acc, jnp.float32(total))
        )
        jax.block_until_ready(server[0])
        return total

    timed = _timed_rounds(protocol, args.rounds, run_round)
    accuracy = _accuracy(model, server[0], x, y) if args.rounds >= ACCURACY_ROUNDS else None
    return timed, accuracy, {}


def run_keras_loop(protocol, args):
    import keras
    import numpy as np
    from protocols import cohort_positions, load

    import fedjax_keras  # noqa: F401

    x, y, offsets = load(protocol)
    net = protocol.make_model()
    net.compile(
        optimizer=keras.optimizers.SGD(protocol.client_lr), loss=_loss(), metrics=["accuracy"]
    )
    server = [net.get_weights()]

    def run_round(r):
        total, acc = 0, [np.zeros_like(w) for w in server[0]]
        for c in cohort_positions(protocol, r, len(offsets) - 1):
            lo, hi = offsets[c], offsets[c + 1]
            net.set_weights(server[0])
            net.fit(
                x[lo:hi],
                y[lo:hi],
                batch_size=protocol.batch_size,
                epochs=1,
                shuffle=True,
                verbose=0,
            )
            n = hi - lo
            for a, w in zip(acc, net.get_weights()):
                a += n * w
            total += n
        server[0] = [a / total for a in acc]
        return total

    timed = _timed_rounds(protocol, args.rounds, run_round)
    accuracy = None
    if args.rounds >= ACCURACY_ROUNDS:
        net.set_weights(server[0])
        accuracy = float(net.evaluate(x, y, batch_size=2000, verbose=0)[1])
    return timed, accuracy, {}


RUNNERS = {
    "fedjax_keras": run_fedjax_keras,
    "fedjax_keras_list": run_fedjax_keras_list,
    "sequential": run_sequential,
    "keras_loop": run_keras_loop,
}


def run_one(protocol_name: str, system: str, args) -> dict:
    import keras
    from protocols import PROTOCOLS

    protocol = PROTOCOLS[protocol_name]
    keras.utils.set_random_seed(0)  # the same initial weights for every system
    timed, accuracy, info = RUNNERS[system](protocol, args)
    seconds = [t for t, _ in timed]
    rates = [n / t for t, n in timed]
    import fedjax_keras  # imported by every system above; says whether the flag was set

    return {
        "protocol": protocol_name,
        "system": system,
        "xla_tuning": fedjax_keras._xla_tuning.status,
        "seconds_per_round": statistics.median(seconds),
        "examples_per_second": statistics.median(rates),
        "accuracy": accuracy,
        "peak_rss_mib": _peak_rss_mib(),
        **info,
    }


def _fedjax_python(venv: Path) -> tuple[Path | None, str]:
    """The python of FedJAX's venv, installing it when needed; (None, why) on failure."""
    python = venv / "bin" / "python"

    def importable() -> bool:
        check = [str(python), "-c", "import fedjax, haiku, optax"]
        return python.exists() and subprocess.run(check, capture_output=True).returncode == 0

    if importable():
        return python, ""
    print(f"installing FedJAX into {venv}: {' '.join(FEDJAX_PACKAGES)} ...", flush=True)
    try:
        if not python.exists():
            subprocess.run(
                [sys.executable, "-m", "venv", str(venv)],
                check=True,
                capture_output=True,
                text=True,
            )
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *FEDJAX_PACKAGES],
            check=True,
            capture_output=True,
            text=True,
        )
    except subprocess.CalledProcessError as error:
        tail = (error.stderr or "").strip().splitlines()[-3:]
        return None, f"installing FedJAX into {venv} failed: {' / '.join(tail)}"
    except OSError as error:
        return None, f"installing FedJAX into {venv} failed: {error}"
    if not importable():
        return None, f"FedJAX does not import in {venv} after installing it"
    return python, ""


def _without_ynn_flag(xla_flags: str) -> str:
    """XLA_FLAGS minus the YNNPACK flag: jaxlib 0.5.3 aborts on flags it does not know."""
    return " ".join(f for f in xla_flags.split() if "xla_cpu_experimental_ynn_fusion_type" not in f)


def run_fedjax(protocol_name: str, python: Path, script: Path) -> dict:
    """One FedJAX row: fedjax_reference.py --child, from benchmarks/, with the protocol's data."""
    from protocols import DATA_DIR

    env = dict(os.environ)
    env.update(
        BENCH_DATA=str(DATA_DIR),
        JAX_PLATFORMS="cpu",
        PYTHONWARNINGS="ignore::DeprecationWarning",
        XLA_FLAGS=_without_ynn_flag(env.get("XLA_FLAGS", "")),
    )
    command = [str(python), str(script), "--child", protocol_name]
    command += [*FEDJAX_CONFIGS[protocol_name], "--no-eval"]
    done = subprocess.run(command, cwd=HERE, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT_JSON ")]
    if not lines:
        raise RuntimeError(f"no RESULT_JSON (exit {done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(lines[-1][len("RESULT_JSON ") :])
    if "error" in result:
        raise RuntimeError(result["error"])
    backend, batching, _ = FEDJAX_CONFIGS[protocol_name]
    return {
        "protocol": protocol_name,
        "system": "fedjax",
        "seconds_per_round": result["median_s_per_round"],
        "examples_per_second": result["median_examples_per_s"],
        "accuracy": result.get("accuracy"),
        "peak_rss_mib": result["peak_rss_mib"],
        "fedjax": f"0.0.17 on jax {result['versions']['jax']}, {backend}, {batching} batches",
    }


def _machine() -> str:
    import jax
    import keras

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = ", ".join(sorted({d.device_kind for d in jax.devices()}))
    return (
        f"{cpu}, {os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()} "
        f"({devices}), keras {keras.__version__}, python {platform.python_version()}"
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--protocols", nargs="+", default=["A", "B", "C100", "C1000", "C10000"])
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument(
        "--rounds",
        type=int,
        default=ACCURACY_ROUNDS,
        help="rounds per run (>= 10 also reports accuracy; >= 6 needed for timing)",
    )
    parser.add_argument("--runner", default="auto")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument(
        "--xla-tuning",
        choices=["default", "on", "off", "both"],
        default="default",
        help="FEDJAX_KERAS_XLA_TUNING for the JAX systems: the environment's (default), on, "
        "off, or both (each row twice, off then on, one after the other)",
    )
    parser.add_argument(
        "--compile-cache",
        type=Path,
        help="JAX's persistent compilation cache folder for the fedjax_keras systems (run twice: "
        "the second run's first round is the warm-cache figure)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows to this file")
    parser.add_argument(
        "--fedjax-venv",
        type=Path,
        default=HERE / ".venv-fedjax",
        help="FedJAX's virtual environment (created when missing; default benchmarks/.venv-fedjax)",
    )
    parser.add_argument(
        "--fedjax-script",
        type=Path,
        help="fedjax_reference.py (default: shared/bench/ beside the checkout)",
    )
    parser.add_argument("--one", nargs=2, metavar=("PROTOCOL", "SYSTEM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(*args.one, args)), flush=True)
        return
    from protocols import ensure_data, shared_bench_file

    ensure_data()
    print("machine:", _machine(), flush=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    fedjax_python, fedjax_script, skipped = None, None, None
    if "fedjax" in args.systems and any(p in FEDJAX_CONFIGS for p in args.protocols):
        fedjax_script = args.fedjax_script or shared_bench_file("fedjax_reference.py")
        if fedjax_script is None or not Path(fedjax_script).exists():
            skipped = "FedJAX rows skipped: fedjax_reference.py not found (pass --fedjax-script)"
        else:
            fedjax_python, why = _fedjax_python(args.fedjax_venv)
            if fedjax_python is None:
                skipped = f"FedJAX rows skipped: {why}"
        if skipped:
            print(skipped, flush=True)
    rows = []
    for protocol in args.protocols:
        for system in args.systems:
            if protocol.startswith("C") and system != "fedjax_keras":
                continue  # Protocol C measures the engine's scaling only.
            if system == "fedjax":
                if protocol not in FEDJAX_CONFIGS or fedjax_python is None:
                    continue  # fedjax_reference.py has protocols A and B only.
                try:
                    row = run_fedjax(protocol, fedjax_python, Path(fedjax_script))
                except RuntimeError as error:
                    print(f"{protocol} fedjax failed: {error}", flush=True)
                    continue
                rows.append(row)
                print(_format(row), flush=True)
                continue
            command = [
                sys.executable,
                __file__,
                "--one",
                protocol,
                system,
                "--rounds",
                str(args.rounds),
                "--runner",
                args.runner,
            ]
            if args.chunk_size:
                command += ["--chunk-size", str(args.chunk_size)]
            if args.compile_cache:
                command += ["--compile-cache", str(args.compile_cache)]
            for tuning in ("off", "on") if args.xla_tuning == "both" else (args.xla_tuning,):
                env = dict(os.environ)
                if tuning != "default":
                    env["FEDJAX_KERAS_XLA_TUNING"] = "1" if tuning == "on" else "0"
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    print(f"{protocol} {system} failed:\n{done.stderr[-3000:]}", flush=True)
                    continue
                row = json.loads(lines[-1][len("RESULT ") :])
                rows.append(row)
                print(_format(row), flush=True)
    print(f"load average after: {os.getloadavg()}", flush=True)
    print()
    print(
        "| protocol | system | s/round (median) | examples/s (median) "
        "| accuracy after 10 rounds | peak RSS |"
    )
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(_format(row))
    ratios = _ratios(rows)
    if ratios:
        print()
        print("Same-run ratios, fedjax_keras examples/s over each system's:")
        for line in ratios:
            print(f"- {line}")
    if skipped:
        print(skipped)
    if args.json:
        args.json.write_text(json.dumps({"machine": _machine(), "rows": rows}, indent=1))


def _ratios(rows) -> list[str]:
    lines = []
    tuned = [r for r in rows if r.get("xla_tuning") != "opted out"]
    for protocol in dict.fromkeys(row["protocol"] for row in rows):
        for name in ("fedjax_keras", "fedjax_keras_list"):
            ours = [r for r in tuned if r["protocol"] == protocol and r["system"] == name]
            others = [
                r
                for r in tuned
                if r["protocol"] == protocol and not r["system"].startswith("fedjax_keras")
            ]
            if ours and others:
                rate = ours[0]["examples_per_second"]
                parts = [f"/ {r['system']} {rate / r['examples_per_second']:.2f}x" for r in others]
                lines.append(f"{protocol}: {name} " + ", ".join(parts))
        for system in dict.fromkeys(r["system"] for r in rows if r["protocol"] == protocol):
            pair = [r for r in rows if r["protocol"] == protocol and r["system"] == system]
            off = [r for r in pair if r.get("xla_tuning") == "opted out"]
            on = [r for r in pair if r.get("xla_tuning") == "applied"]
            if off and on:
                speedup = on[0]["examples_per_second"] / off[0]["examples_per_second"]
                lines.append(
                    f"{protocol}: {system} with the XLA:CPU tuning / without {speedup:.2f}x"
                )
    return lines


def _format(row) -> str:
    accuracy = "-" if row["accuracy"] is None else f"{row['accuracy']:.3f}"
    extra = f" ({row['runner']}, padding {row['padding']})" if "runner" in row else ""
    if "first_round_s" in row:
        extra += f" [first round {row['first_round_s']:.2f} s]"
    if row.get("xla_tuning") not in (None, "applied"):
        extra += f" [XLA tuning: {row['xla_tuning']}]"
    if "fedjax" in row:
        extra = f" ({row['fedjax']})"
    return (
        f"| {row['protocol']} | {row['system']}{extra} | {row['seconds_per_round']:.4f} | "
        f"{row['examples_per_second']:,.0f} | {accuracy} | {row['peak_rss_mib']:,.0f} MiB |"
    )


if __name__ == "__main__":
    main()
