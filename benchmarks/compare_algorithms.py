"""Every registered algorithm on one non-IID task: test accuracy per round, a table, a plot.

The task: EMNIST-like 28x28 images of 10 classes (`fedjax_keras.data.emnist_like`,
pixel noise 0.6), pooled and re-split over 100 clients by Dirichlet label skew
with alpha 0.1 (`partition_dirichlet`, Hsu et al. 2019, arXiv:1909.06335), each
client's examples split 80/20 into train and test (`train_test_split`). The
model: the FedAvg paper's 2NN (the command line's `--model mlp`, two ReLU layers
of 200 units). Every name of `fedjax_keras.algorithms.algorithm_names()` is built
through its registry entry, as `fedjax-keras simulate --algorithm NAME` builds
it: one client learning rate for all, each entry's default server learning rate
and default options. Every algorithm sees the same initial weights and the same
cohort in each round.

Measured after every round: the accuracy of the server's model
(`process.get_model_weights(state)`) over every client's test examples. After
the last round, for the algorithms that keep personal models (Ditto, APFL,
FedRep, FedPer, HypCluster), also the accuracy of each client's own model on
its own test examples, summed over the clients.

Writes a JSON of every curve, a plot (accuracy against round, one panel per
algorithm with FedAvg's curve for reference) and prints a Markdown table (the
one in docs/algorithms.md), with the machine and library versions. Timing: wall
time per algorithm includes building, compiling (most of the first round) and
the per-round evaluation.

    python benchmarks/compare_algorithms.py          # docs/algorithms.md's table and plot
    python benchmarks/compare_algorithms.py --quick  # smoke run, outputs in a temp folder
"""

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import tempfile
import time
import traceback
import warnings

os.environ.setdefault("KERAS_BACKEND", "jax")  # keras fixes its backend at its first import

import jax
import jax.numpy as jnp
import keras
import numpy as np
import optax

import fedjax_keras as fk
from fedjax_keras import algorithms

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_JSON = ROOT / "benchmarks" / "results" / "compare_algorithms.json"
DEFAULT_PLOT = ROOT / "docs" / "img" / "algorithms_dirichlet.png"
PERSONAL = ("ditto", "apfl", "fedrep", "fedper", "hypcluster")


# ------------------------------------------------------------------------ task and model


def make_task(*, num_clients, alpha, noise, seed):
    """(train, test) FederatedData: pooled EMNIST-like examples, Dirichlet(alpha) label skew."""
    pool = fk.data.emnist_like(
        seed=seed, num_clients=num_clients, num_classes=10, size_median=100, noise=noise
    )
    x, y = pool.examples["x"], pool.examples["y"]
    data = fk.data.partition_dirichlet(
        x, y, num_clients=num_clients, alpha=alpha, seed=seed, min_size=10
    )
    return data.train_test_split(0.2, seed=seed)


def make_model(example):
    """The FedAvg paper's 2NN, as the command line's ``--model mlp``."""
    init = keras.initializers.GlorotUniform(seed=0)
    net = keras.Sequential(
        [
            keras.Input(example["x"].shape[1:]),
            keras.layers.Flatten(),
            keras.layers.Dense(200, activation="relu", kernel_initializer=init),
            keras.layers.Dense(200, activation="relu", kernel_initializer=init),
            keras.layers.Dense(10, kernel_initializer=init),
        ],
        name="mlp",
    )
    return fk.from_keras_model(
        net,
        example,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def padded_clients(data):
    """Every client's x, y [clients, max_size, ...] and mask [clients, max_size] (host)."""
    sizes = data.client_sizes
    width = max(int(sizes.max()), 1)
    x = data.examples["x"]
    xs = np.zeros((data.num_clients, width) + x.shape[1:], x.dtype)
    ys = np.zeros((data.num_clients, width), np.int32)
    mask = np.zeros((data.num_clients, width), bool)
    for c in range(data.num_clients):
        client = data.client(c)
        n = len(client["y"])
        xs[c, :n], ys[c, :n], mask[c, :n] = client["x"], client["y"], True
    return xs, ys, mask


# --------------------------------------------------------------------- personal models


def personal_weights(name, process, state, model, train_padded):
    """(client c's own model stacked over the population [clients, ...], details).

    Ditto: its personal model; APFL: its mixture alpha_c v_c + (1 - alpha_c) w;
    FedRep/FedPer: the server's body with the client's head; HypCluster: the
    cluster model with the lowest loss on the client's train examples (the
    paper's rule). A client never sampled has the algorithm's starting row.
    Other algorithms: (None, {}).
    """
    server = process.get_model_weights(state)
    population = train_padded[0].shape[0]
    positions = np.arange(population)

    def broadcast(tree):
        return jax.tree.map(lambda a: jnp.broadcast_to(a, (population,) + a.shape), tree)

    if name == "ditto":
        return state.client_states.gather(positions)["algorithm"], {}
    if name == "apfl":
        rows = state.client_states.gather(positions)["algorithm"]
        alpha = rows["alpha"]

        def mix(v, w):
            a = alpha.reshape((-1,) + (1,) * w.ndim)
            return a * v + (1 - a) * w

        mixed = jax.tree.map(mix, rows["personal"], server.trainable)
        return fk.ModelWeights(mixed, broadcast(server.non_trainable)), {
            "mean_alpha": float(np.mean(np.asarray(alpha)))
        }
    if name in ("fedrep", "fedper"):
        heads = state.client_states.gather(positions)["algorithm"]
        trainable = {**broadcast(server.trainable), **heads}
        return fk.ModelWeights(trainable, broadcast(server.non_trainable)), {}
    if name == "hypcluster":
        clusters = algorithms.hyp_cluster_models(state)
        x, y, mask = train_padded
        mean_losses = make_mean_losses(model)
        losses = np.stack([np.asarray(mean_losses(w, x, y, mask)) for w in clusters])
        best = losses.argmin(axis=0)  # [clients]
        stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *clusters)
        return jax.tree.map(lambda leaf: leaf[best], stacked), {
            "clients_per_cluster": np.bincount(best, minlength=len(clusters)).tolist()
        }
    return None, {}


def make_mean_losses(model):
    """``f(weights, x, y, mask) -> each client's mean cross-entropy [clients]`` (one model)."""

    @jax.jit
    def losses(weights, x, y, mask):
        def one(x, y, mask):
            logits = model.apply(weights, x)
            per_example = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1)

        return jax.vmap(one)(x, y, mask)

    return losses


def make_accuracy_per_client(model):
    """``f(stacked_weights, x, y, mask) -> (correct [clients], examples [clients])``."""

    @jax.jit
    def correct(weights, x, y, mask):
        def one(weights, x, y, mask):
            hits = jnp.argmax(model.apply(weights, x), axis=-1) == y
            return jnp.sum(hits * mask), jnp.sum(mask)

        return jax.vmap(one)(weights, x, y, mask)

    return correct


# ------------------------------------------------------------------------------ runs


def run_algorithm(name, *, model, train, test_pop, evaluator, args, padded, accuracy_fn):
    """One algorithm's run: per-round curves, timing, the final personal accuracy, any error."""
    entry = algorithms.get_algorithm(name)
    settings = algorithms.AlgorithmSettings(
        client_lr=args.client_lr,
        server_lr=None,
        population_size=train.num_clients,
        options=dict(entry.options),
    )
    record = {
        "client_lr": None if entry.epochs_must_be_one else args.client_lr,
        "server_lr": entry.default_server_lr,
        "options": {k: v for k, v in entry.options.items()},
        "round": [],
        "train_loss": [],
        "eval_loss": [],
        "eval_accuracy": [],
        "num_dropped_clients": [],
        "first_round_seconds": None,
        "train_seconds": 0.0,
        "eval_seconds": 0.0,
        "personal_accuracy": None,
        "never_sampled_clients": None,
        "error": None,
    }
    began = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            process = entry.make(model, settings, batch_size=args.batch_size, epochs=1)
            state = process.initialize(args.seed)
            for r in range(args.rounds):
                tic = time.perf_counter()
                cohort = train.sample_clients(args.cohort, seed=[args.seed, r])
                output = process.next(state, cohort)
                state = output.state
                jax.block_until_ready(state)
                seconds = time.perf_counter() - tic
                if r == 0:
                    record["first_round_seconds"] = seconds
                record["train_seconds"] += seconds
                tic = time.perf_counter()
                weights = process.get_model_weights(state)
                eval_state = evaluator.set_model_weights(evaluator.initialize(), weights)
                metrics = evaluator.next(eval_state, test_pop).metrics
                record["eval_seconds"] += time.perf_counter() - tic
                record["round"].append(r + 1)
                record["train_loss"].append(float(output.metrics["loss"]))
                record["eval_loss"].append(float(metrics["loss"]))
                record["eval_accuracy"].append(float(metrics["accuracy"]))
                record["num_dropped_clients"].append(int(output.metrics["num_dropped_clients"]))
            record["runner"] = str(process.mode)
            if name in PERSONAL:
                stacked, record["personal_detail"] = personal_weights(
                    name, process, state, model, padded["train"]
                )
                correct, count = accuracy_fn(stacked, *padded["test"])
                record["personal_accuracy"] = float(np.sum(correct) / np.sum(count))
                seen = state.client_states.seen if state.client_states is not None else None
                record["never_sampled_clients"] = (
                    None if seen is None else int(train.num_clients - np.sum(np.asarray(seen)))
                )
            if name == "fedavg":
                # The server model scored by the personal column's code: main() checks
                # that it matches build_fed_eval's accuracy.
                population = padded["test"][0].shape[0]
                server = jax.tree.map(
                    lambda a: jnp.broadcast_to(a, (population,) + a.shape), weights
                )
                correct, count = accuracy_fn(server, *padded["test"])
                record["per_client_code_accuracy"] = float(np.sum(correct) / np.sum(count))
        record["warnings"] = sorted({" ".join(str(w.message).split())[:300] for w in caught})
    except Exception as error:  # noqa: BLE001 (a failing algorithm is a result to report)
        record["error"] = f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
        record["traceback"] = traceback.format_exc()
    record["wall_seconds"] = time.perf_counter() - began
    return record


def summary_row(name, record):
    """One Markdown row: algorithm, rates, final / best accuracy, personal, times."""
    acc = record["eval_accuracy"]
    if acc:
        final = _fmt(acc[-1])
        finite = [a for a in acc if not math.isnan(a)]
        best_i = int(np.argmax(finite)) if finite else None
        best = (
            f"{finite[best_i]:.3f} (r{record['round'][acc.index(finite[best_i])]})"
            if finite
            else "nan"
        )
    else:
        final = best = "-"
    if record["error"]:
        final = f"error after {len(acc)} rounds: {record['error'][:120]}"
    client_lr = "-" if record["client_lr"] is None else f"{record['client_lr']:g}"
    personal = "-" if record["personal_accuracy"] is None else _fmt(record["personal_accuracy"])
    first = record["first_round_seconds"]
    return (
        f"| `{name}` | {client_lr} | {record['server_lr']:g} | {final} | {best} | {personal} "
        f"| {record['wall_seconds']:.1f} | {'-' if first is None else f'{first:.1f}'} |"
    )


def _fmt(value):
    return "nan" if math.isnan(value) else f"{value:.3f}"


def write_json(path, meta, results):
    """The results as JSON, one line per algorithm (floats to 6 significant digits)."""

    def rounded(value):
        if isinstance(value, float):
            return float(f"{value:.6g}")
        if isinstance(value, dict):
            return {k: rounded(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [rounded(v) for v in value]
        return value

    lines = [f"  {json.dumps(name)}: {json.dumps(rounded(r))}" for name, r in results.items()]
    text = (
        f'{{\n "meta": {json.dumps(rounded(meta), indent=1).replace(chr(10), chr(10) + " ")},'
        '\n "algorithms": {\n' + ",\n".join(lines) + "\n }\n}\n"
    )
    json.loads(text)  # well-formed
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def plot(results, path, title):
    """Accuracy against round: one small panel per algorithm, FedAvg's curve in grey in each."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit(
            "compare_algorithms.py: the plot needs matplotlib; install it "
            "(pip install matplotlib) or pass --no-plot."
        )
    names = list(results)
    cols = min(5, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(2.1 * cols, 1.6 * rows + 0.6),
        dpi=72,
        sharex=True,
        sharey=True,
        squeeze=False,
    )
    reference = results.get("fedavg")
    for ax, name in zip(axes.flat, names):
        record = results[name]
        if reference is not None and name != "fedavg" and reference["round"]:
            ax.plot(reference["round"], reference["eval_accuracy"], color="0.75", linewidth=1)
        if record["round"]:
            ax.plot(record["round"], record["eval_accuracy"], color="tab:blue", linewidth=1.3)
        if record["personal_accuracy"] is not None:
            ax.plot(record["round"][-1], record["personal_accuracy"], "*", color="tab:red", ms=8)
        acc = record["eval_accuracy"]
        label = (
            f"error: {record['error'].split(':')[0]}"
            if record["error"]
            else (f"{_fmt(acc[-1])}" if acc else "-")
        )
        ax.set_title(f"{name} ({label})", fontsize=9)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in axes.flat[len(names) :]:
        ax.axis("off")
    fig.supxlabel("round", fontsize=9)
    fig.suptitle(
        f"{title}\ntest accuracy of the server model by round (grey: fedavg; red star: "
        "personalized accuracy after the last round)",
        fontsize=9,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def machine():
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, {jax.default_backend()}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--cohort", type=int, default=10, help="clients per round")
    parser.add_argument("--clients", type=int, default=100, help="population")
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet label skew")
    parser.add_argument("--noise", type=float, default=0.6, help="pixel noise of the images")
    parser.add_argument("--client-lr", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--algorithms", default=None, help="comma-separated names (default: all)")
    parser.add_argument("--json", type=pathlib.Path, default=None, help=f"default {DEFAULT_JSON}")
    parser.add_argument("--plot", type=pathlib.Path, default=None, help=f"default {DEFAULT_PLOT}")
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="3 rounds, outputs in a temp folder (a smoke run)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = 3
        scratch = pathlib.Path(tempfile.gettempdir()) / "fedjax_keras_compare"
        args.json = args.json or scratch / "compare_algorithms.json"
        args.plot = args.plot or scratch / "algorithms_dirichlet.png"
    args.json = args.json or DEFAULT_JSON
    args.plot = args.plot or DEFAULT_PLOT
    names = algorithms.algorithm_names()
    if args.algorithms:
        names = tuple(n.strip() for n in args.algorithms.split(","))
        for n in names:
            algorithms.get_algorithm(n)  # a KeyError lists the known names

    started = time.perf_counter()
    train, test = make_task(
        num_clients=args.clients, alpha=args.alpha, noise=args.noise, seed=args.seed
    )
    test_pop = test.subset(np.flatnonzero(test.client_sizes > 0))
    model = make_model({"x": train.examples["x"][:2], "y": train.examples["y"][:2]})
    evaluator = algorithms.build_fed_eval(model, batch_size=50)
    padded = {"train": padded_clients(train), "test": padded_clients(test)}
    accuracy_fn = make_accuracy_per_client(model)
    top_share = np.mean(
        [
            np.bincount(train.client(c)["y"], minlength=10).max()
            / max(len(train.client(c)["y"]), 1)
            for c in range(train.num_clients)
        ]
    )
    task = (
        f"emnist_like (10 classes, noise {args.noise}) pooled, {args.clients} clients by "
        f"partition_dirichlet(alpha={args.alpha}, min_size=10), 80/20 train/test per client: "
        f"{train.num_examples} train / {test.num_examples} test examples, client sizes "
        f"{int(train.client_sizes.min())}-{int(train.client_sizes.max())} (median "
        f"{int(np.median(train.client_sizes))}), mean top-label share {top_share:.2f}"
    )
    settings = (
        f"model mlp (2x200 ReLU), {args.rounds} rounds, cohort {args.cohort}, batch "
        f"{args.batch_size}, 1 epoch, client lr {args.client_lr}, server lr and options: "
        f"registry defaults, seed {args.seed}"
    )
    header = (
        f"{machine()}; jax {jax.__version__}, keras {keras.__version__}, "
        f"Python {platform.python_version()}"
    )
    print(f"# {header}\n# task: {task}\n# {settings}", flush=True)

    results = {}
    for name in names:
        record = run_algorithm(
            name,
            model=model,
            train=train,
            test_pop=test_pop,
            evaluator=evaluator,
            args=args,
            padded=padded,
            accuracy_fn=accuracy_fn,
        )
        results[name] = record
        acc = record["eval_accuracy"]
        status = record["error"] or f"final {_fmt(acc[-1])}"
        print(f"# {name}: {status} ({record['wall_seconds']:.1f} s)", file=sys.stderr, flush=True)
        for message in record.get("warnings", ()):
            print(f"#   warning: {message}", file=sys.stderr)

    total = time.perf_counter() - started
    meta = {
        "date": datetime.date.today().isoformat(),
        "machine": header,
        "task": task,
        "settings": settings,
        "command": " ".join(
            ["python", "benchmarks/compare_algorithms.py", *(argv or sys.argv[1:])]
        ),
        "total_seconds": total,
    }
    write_json(args.json, meta, results)
    if not args.no_plot:
        title = (
            f"Dirichlet(alpha={args.alpha}) label skew, {args.clients} clients, cohort "
            f"{args.cohort}, mlp, client lr {args.client_lr}, seed {args.seed}"
        )
        plot(results, args.plot, title)

    print(
        "| `--algorithm` | client lr | server lr | final accuracy | best accuracy (round) "
        "| personalized accuracy | wall time (s) | first round (s) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, record in results.items():
        print(summary_row(name, record))
    print(
        f"# total {total:.0f} s; JSON {args.json}" + ("" if args.no_plot else f"; plot {args.plot}")
    )
    check = results.get("fedavg", {}).get("per_client_code_accuracy")
    if check is not None and not math.isclose(
        check, results["fedavg"]["eval_accuracy"][-1], abs_tol=1e-6
    ):
        sys.exit(
            f"compare_algorithms.py: the personalized column's code scores fedavg's server "
            f"model {check}, build_fed_eval {results['fedavg']['eval_accuracy'][-1]}: a bug "
            "in this script's per-client evaluation."
        )


if __name__ == "__main__":
    main()
