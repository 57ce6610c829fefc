"""``fedjax-keras simulate``: run a whole federated experiment from flags or a config file.

``main`` turns every user mistake (a `UsageError`) into one line on stderr and
exit status 2, and every warning into one line; a bug still shows its
traceback. Ctrl-C stops the run after the round under way and its checkpoint,
with status 130 (see `fedjax_keras.cli.interrupt`). The round loop samples the
cohort of round ``r`` with seed ``(seed, r)`` and takes every other random
choice from the state (seed and round counter), so a run resumed from a
checkpoint repeats the uninterrupted run bit for bit.
"""

import argparse
import datetime
import logging
import os
import signal
import sys
import time
import warnings

from fedjax_keras.cli import checkpoints, distributed
from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli._errors import UsageError
from fedjax_keras.cli.interrupt import StopRequest

HELP = {
    "task": "built-in task: emnist_like, cifar_like or synthetic (LEAF Synthetic(alpha, beta))",
    "task_file": "a TFF .h5 file (EMNIST, Shakespeare) or LEAF .json file/directory "
    "instead of --task",
    "task_format": "format of --task-file: auto (by extension), tff_h5 or leaf_json",
    "num_clients": "clients in a built-in task's population",
    "client_size": "median examples per client of a built-in task (cifar_like: exact)",
    "num_classes": "classes of a built-in task (default 62 for emnist_like, else 10)",
    "alpha": "synthetic task: model heterogeneity",
    "beta": "synthetic task: input heterogeneity",
    "task_seed": "seed of the built-in task's data",
    "test_fraction": "fraction of each client's examples held out for evaluation",
    "model": "emnist_cnn, small_cnn, char_lstm, logreg, mlp, or package.module:function "
    "(default: small_cnn for images, char_lstm for text, logreg otherwise)",
    "algorithm": ", ".join(config_lib.ALGORITHMS),
    "client_lr": "client SGD learning rate (default by task: 0.2 for images with small_cnn, "
    "0.1 for text, 0.05 otherwise); a list such as 0.05,0.1,0.2 runs a sweep",
    "server_lr": "server learning rate (default 1.0; fedsgd 0.1; fedadam/fedyogi 0.01; "
    "fedadagrad 0.1); a list runs a sweep",
    "mu": "fedprox proximal strength (also --options mu=...)",
    "aggregator": "how client updates are combined: KIND[:NAME=VALUE,...][/INNER...], e.g. "
    "'dp:noise_multiplier=1.0,clip=0.5' or 'clipped:norm=1/median' (see docs/cli.md)",
    "options": "the algorithm's named options, NAME=VALUE[,NAME=VALUE...] (see docs/algorithms.md)",
    "devices": "devices to shard the clients over: the first N of each process "
    "(N forced CPU devices when there is no accelerator)",
    "dropout": "probability that a sampled client never reports",
    "straggler_rate": "probability that a client is a straggler",
    "straggler_work": "fraction of its local steps a straggler completes",
    "batch_size": "examples per local step",
    "epochs": "local epochs per round",
    "rounds": "total rounds of the run",
    "cohort_size": "clients sampled per round",
    "chunk_size": "clients per compiled call: a positive int, auto or none (whole cohort)",
    "runner": "how a chunk runs: auto, timed, vmap, unroll or sequential",
    "seed": "seed of cohort sampling, shuffling, dropout and model initialisation",
    "seeds": "a sweep: one run per seed, e.g. 0,1,2, trained together (instead of --seed; "
    "see docs/cli.md)",
    "eval_every": "evaluate on the held-out data every N rounds (and after the last)",
    "checkpoint_every": "checkpoint the whole process state every N rounds (and after the last)",
    "keep_checkpoints": "keep the newest N checkpoints",
    "run_dir": "run directory (default runs/<task>-<algorithm>-<time>)",
    "progress": "show the live progress bar",
    "compile_cache": "keep compiled programs on disk for later runs "
    "(in $XDG_CACHE_HOME/fedjax_keras, see docs/performance.md)",
}


class _Launch(Exception):
    """``fedjax-keras launch ...`` was parsed (carries its arguments)."""

    def __init__(self, args: dict):
        super().__init__("launch")
        self.options = args


def _launch(args: dict) -> int:
    rest = list(args["rest"])
    if rest and rest[0] == "--":
        rest = rest[1:]
    count = config_lib.coerce_int_flag("--num-processes", args["num_processes"], 1, 64)
    port = args.get("port")
    port = None if port is None else config_lib.coerce_int_flag("--port", port, 1, 65535)
    if not rest or rest[0] != "simulate":
        raise UsageError(
            "launch: expected the command after '--', e.g. fedjax-keras launch "
            "--num-processes 2 -- simulate --task synthetic."
        )
    flags, _, _ = _parse(rest)  # a mistake in the command is one line here, not P of them
    if "seeds" in flags or any(isinstance(flags.get(n), tuple) for n in ("client_lr", "server_lr")):
        raise UsageError(
            "launch: a sweep (--seeds, or a list in --client-lr or --server-lr) runs in one "
            "process; run it with fedjax-keras simulate."
        )
    return distributed.launch(count, rest, port)


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is in ``--help``)."""

    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedjax-keras", description="Federated learning simulation for Keras 3 models on JAX."
    )
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    launch = commands.add_parser(
        "launch",
        help="start several local processes of one run (multi-process simulation)",
        description="Start P local processes that run one command together "
        "(coordinator on 127.0.0.1), e.g. fedjax-keras launch --num-processes 2 -- "
        "simulate --task synthetic. On a cluster, start one process per host yourself "
        "(docs/scaling.md).",
    )
    launch.add_argument("--num-processes", metavar="P", required=True, help="processes to start")
    launch.add_argument("--port", metavar="PORT", help="coordinator port (default: a free one)")
    launch.add_argument("rest", nargs=argparse.REMAINDER, help="-- simulate [flags...]")
    sim = commands.add_parser(
        "simulate",
        help="run a federated experiment",
        description="Run a federated experiment. "
        "Defaults: FedAvg on the built-in EMNIST-like task.",
        argument_default=argparse.SUPPRESS,
    )
    sim.add_argument(
        "--config", help="YAML (.yaml/.yml) or TOML (.toml) file of settings; flags override it"
    )
    sim.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --run-dir from its newest checkpoint",
    )
    for name, field in config_lib.FIELDS.items():
        flag = "--" + name.replace("_", "-")
        default = field.default
        help_text = HELP[name] if default is None else f"{HELP[name]} (default: {default})"
        if field.type is bool:
            sim.add_argument(flag, action=argparse.BooleanOptionalAction, help=help_text)
        else:
            sim.add_argument(flag, metavar=name.upper(), help=help_text)
    return parser


def _parse(argv) -> tuple[dict, str | None, bool]:
    argv = list(argv)
    if not argv:
        argv = ["simulate"]
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command is None:
        raise UsageError("expected a command: simulate or launch (see fedjax-keras --help).")
    if command == "launch":
        raise _Launch(args)
    config_file = args.pop("config", None)
    resume = args.pop("resume", False)
    flags = {
        name: config_lib.coerce(name, value, "--" + name.replace("_", "-"))
        for name, value in args.items()
    }
    return flags, config_file, resume


def _resolve(argv):
    flags, config_file, resume = _parse(argv)
    file_settings = config_lib.read_config_file(config_file) if config_file else {}
    if not resume:
        config = config_lib.resolve({}, file_settings, flags)
        if config.run_dir is None:
            stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
            config.run_dir = os.path.join(
                "runs", f"{config.task_file and 'file' or config.task}-{config.algorithm}-{stamp}"
            )
        return config, False
    run_dir = flags.get("run_dir") or file_settings.get("run_dir")
    if not run_dir:
        raise UsageError("--resume: expected --run-dir DIR, the directory of the run to continue.")
    saved_path = os.path.join(run_dir, "config.yaml")
    if not os.path.exists(saved_path):
        raise UsageError(
            f"--resume: {run_dir!r} holds no run (no config.yaml); "
            "expected the --run-dir of an earlier run."
        )
    saved = config_lib.read_config_file(saved_path)
    for name, value in {**file_settings, **flags}.items():
        if name in config_lib.FIXED_ON_RESUME and value != saved.get(name):
            raise UsageError(
                f"--{name.replace('_', '-')}: the run in {run_dir} used {saved.get(name)!r}, "
                "received "
                f"{value!r}; a resumed run keeps its settings (only --rounds, --eval-every, "
                "--checkpoint-every, --keep-checkpoints and --progress may change)."
            )
    return config_lib.resolve(saved, file_settings, {**flags, "run_dir": run_dir}), True


def simulate(config, resume: bool) -> int:
    """Runs (or resumes) the experiment of ``config``; returns the exit status.

    0 when every round ran; 130 when Ctrl-C stopped it (after the round under
    way and its checkpoint). A checkpoint that cannot be written for lack of
    space, or a run directory that cannot be written, is a `UsageError`.
    """
    import jax

    import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
    from fedjax_keras.cli._compile_cache import configure_compile_cache
    from fedjax_keras.cli.run_dir import RunDir

    logging.getLogger("absl").setLevel(logging.ERROR)
    if config.devices is not None:
        # Before the backend starts: N CPU devices when there is no accelerator.
        jax.config.update("jax_num_cpu_devices", config.devices)
    configure_compile_cache(config.compile_cache)
    distributed.join_if_launched()
    if distributed.is_primary():
        run = RunDir.open_existing(config.run_dir) if resume else RunDir.create(config.run_dir)
    distributed.barrier("fedjax_keras_run_dir")
    if not distributed.is_primary():
        run = distributed.NullRun(config.run_dir)
    with StopRequest(run.path) as stop:
        if config_lib.sweep_size(config) is not None:
            from fedjax_keras.cli.sweep import run_sweep

            return run_sweep(config, resume, run, stop)
        return _run(config, resume, run, stop)


def _run(config, resume: bool, run, stop: StopRequest) -> int:
    from fedjax_keras.algorithms import build_fed_eval
    from fedjax_keras.cli.experiment import (
        build_model,
        build_process,
        engine_options,
        eval_population,
    )
    from fedjax_keras.cli.progress import RoundProgress, print_summary
    from fedjax_keras.cli.tasks import load_task
    from fedjax_keras.errors import PaddingWarning

    task = load_task(config)
    if config.client_lr is None:
        config.client_lr = task.default_client_lr
    model = build_model(config, task)
    process = build_process(config, model, task)
    evaluator = build_fed_eval(
        model, batch_size=max(config.batch_size, 50), **engine_options(config)
    )
    test = eval_population(task)
    if test.num_clients == 0 and distributed.is_primary():
        print(
            f"fedjax-keras: note: --test-fraction {config.test_fraction} holds out no example "
            "(every client is too small); evaluation is skipped.",
            file=sys.stderr,
        )
    run.write_config(config)

    state = process.initialize(config.seed)
    start = 0
    if resume:
        state, start = checkpoints.restore(run, state)
    run.load_rows(start)
    if resume and distributed.is_primary():
        print(f"Resuming {run.path} from round {start} of {config.rounds}.", file=sys.stderr)
    if stop.requested:
        return checkpoints.interrupted(run, f"before round {start + 1}")
    kill_after = os.environ.get(checkpoints.KILL_AFTER_ROUND_ENV)
    title = f"{config.algorithm} on {task.name}, model {config.model or task.default_model}"
    began = time.perf_counter()
    elapsed_before = run.rows[-1]["elapsed_seconds"] if run.rows else 0.0
    progress = RoundProgress(config.rounds, start, config.progress and distributed.is_primary())
    try:
        for round_num in range(start, config.rounds):
            tic = time.perf_counter()
            cohort = task.train.sample_clients(config.cohort_size, seed=[config.seed, round_num])
            output = process.next(state, cohort)
            state, metrics = output.state, output.metrics
            if config.runner != process.mode:
                # 'auto' / 'timed' may choose by measuring; the runners agree to 1e-5,
                # not bit for bit, so record the choice: --resume must repeat it exactly.
                config.runner = process.mode
                run.write_config(config)
            seconds = time.perf_counter() - tic
            done = round_num + 1
            row = {
                "round": done,
                "train_loss": metrics["loss"],
                "train_accuracy": metrics.get("accuracy"),
                "eval_loss": None,
                "eval_accuracy": None,
                "num_clients": metrics["num_clients"],
                "num_examples": metrics["num_examples"],
                "num_dropped_clients": metrics["num_dropped_clients"],
                "round_seconds": seconds,
                "clients_per_second": config.cohort_size / seconds,
                "examples_per_second": metrics["num_examples"] / seconds,
            }
            if "epsilon" in metrics:  # --aggregator with a noised 'dp' stage
                row["epsilon"], row["delta"] = metrics["epsilon"], metrics["delta"]
            if test.num_clients and (done % config.eval_every == 0 or done == config.rounds):
                eval_state = evaluator.set_model_weights(evaluator.initialize(), state.model)
                with warnings.catch_warnings():
                    # The evaluation's batch size is the command line's choice, not the user's.
                    warnings.simplefilter("ignore", PaddingWarning)
                    result = evaluator.next(eval_state, test).metrics
                row["eval_loss"], row["eval_accuracy"] = result["loss"], result.get("accuracy")
            row["elapsed_seconds"] = elapsed_before + time.perf_counter() - began
            run.append(row)
            progress.update(row)
            # Every process must leave the loop at the same round.
            stopping = distributed.any_process(stop.requested)
            # On Ctrl-C, checkpoint the round just finished, so --resume loses nothing.
            if done % config.checkpoint_every == 0 or done == config.rounds or stopping:
                checkpoints.save(run, state, done, config.keep_checkpoints)
            if kill_after is not None and done == int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)
            if stopping:
                progress.stop()
                return checkpoints.interrupted(run, f"after round {done} (checkpoint saved)")
    except KeyboardInterrupt:  # only outside the main thread, where no handler is installed
        progress.stop()
        return checkpoints.interrupted(run, "")
    finally:
        progress.stop()
    if not distributed.is_primary():
        return 0
    run.plot(title)
    print_summary(run.rows, run.path, time.perf_counter() - began, title)
    if stop.requested:  # Ctrl-C during the plot or the summary: the rounds are all done
        return checkpoints.interrupted(
            run, f"after the last round ({config.rounds}, checkpoint saved)"
        )
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each, like the errors."""
    text = " ".join(str(message).split())
    print(f"fedjax-keras: warning: {text}", file=sys.stderr)


def main(argv=None) -> int:
    """The ``fedjax-keras`` entry point; returns the exit status.

    A `UsageError` (and running out of host memory, which a too-large task or
    batch causes) prints one line and exits 2; Ctrl-C exits 130 with the
    command that resumes the run; a bug still shows its traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            try:
                config, resume = _resolve(argv)
            except _Launch as launch:
                return _launch(launch.options)
            return simulate(config, resume)
        except UsageError as error:
            message = " ".join(str(error).split())
            print(f"fedjax-keras: error: {message}", file=sys.stderr)
            return 2
        except MemoryError as error:
            print(
                f"fedjax-keras: error: out of memory ({' '.join(str(error).split())}); "
                "reduce --num-clients, --client-size, --num-classes, --batch-size or "
                "--cohort-size.",
                file=sys.stderr,
            )
            return 2
        except KeyboardInterrupt:  # before the run's handler was installed
            print("fedjax-keras: interrupted before the run started.", file=sys.stderr)
            return 130


def main_exit() -> None:
    """The console script: ``sys.exit(main())``."""
    sys.exit(main())
