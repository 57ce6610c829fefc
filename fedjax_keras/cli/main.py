"""``fedjax-keras simulate``: run a whole federated experiment from flags or a config file.

``main`` turns every user mistake (a `UsageError`) into one line on stderr and
exit status 2; a bug still shows its traceback. The round loop samples the
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

from fedjax_keras.cli import config as config_lib
from fedjax_keras.cli._errors import UsageError

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
    "algorithm": "fedavg, fedavg_unweighted, fedprox, fedsgd, scaffold, fedadam, fedyogi, "
    "fedadagrad",
    "client_lr": "client SGD learning rate (default by task: 0.2 for images with small_cnn, "
    "0.1 for text, 0.05 otherwise)",
    "server_lr": "server learning rate (default 1.0; fedsgd 0.1; fedadam/fedyogi 0.01; "
    "fedadagrad 0.1)",
    "mu": "fedprox proximal strength",
    "batch_size": "examples per local step",
    "epochs": "local epochs per round",
    "rounds": "total rounds of the run",
    "cohort_size": "clients sampled per round",
    "chunk_size": "clients per compiled call: a positive int, auto or none (whole cohort)",
    "runner": "how a chunk runs: auto, timed, vmap, unroll or sequential",
    "seed": "seed of cohort sampling, shuffling, dropout and model initialisation",
    "eval_every": "evaluate on the held-out data every N rounds (and after the last)",
    "checkpoint_every": "checkpoint the whole process state every N rounds (and after the last)",
    "keep_checkpoints": "keep the newest N checkpoints",
    "run_dir": "run directory (default runs/<task>-<algorithm>-<time>)",
    "progress": "show the live progress bar",
    "compile_cache": "keep compiled programs on disk for later runs "
    "(in $XDG_CACHE_HOME/fedjax_keras, see docs/performance.md)",
}
# Test hook: once this round is logged (and checkpointed, when due) the process
# kills itself with SIGKILL, as a preempted job would be; tests/test_checkpoint.py
# uses it to check that --resume repeats the uninterrupted run bit for bit.
KILL_AFTER_ROUND_ENV = "FEDJAX_KERAS_KILL_AFTER_ROUND"


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (the usage is in ``--help``)."""

    def error(self, message):
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedjax-keras", description="Federated learning simulation for Keras 3 models on JAX."
    )
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
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
    if args.pop("command") is None:
        raise UsageError("expected a command: simulate (see fedjax-keras --help).")
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
    """Runs (or resumes) the experiment of ``config``; returns the exit status."""
    import fedjax_keras  # noqa: F401 (selects the JAX backend before keras loads)
    from fedjax_keras import checkpoint
    from fedjax_keras.algorithms import build_fed_eval
    from fedjax_keras.cli._compile_cache import configure_compile_cache
    from fedjax_keras.cli.experiment import build_model, build_process, eval_population
    from fedjax_keras.cli.progress import RoundProgress, print_summary
    from fedjax_keras.cli.run_dir import RunDir
    from fedjax_keras.cli.tasks import load_task

    logging.getLogger("absl").setLevel(logging.ERROR)
    configure_compile_cache(config.compile_cache)
    run = RunDir.open_existing(config.run_dir) if resume else RunDir.create(config.run_dir)
    task = load_task(config)
    if config.client_lr is None:
        config.client_lr = task.default_client_lr
    model = build_model(config, task)
    process = build_process(config, model, task)
    evaluator = build_fed_eval(
        model, batch_size=max(config.batch_size, 50), chunk_size=process.chunk_size
    )
    test = eval_population(task)
    if test.num_clients == 0:
        print(
            f"fedjax-keras: note: --test-fraction {config.test_fraction} holds out no example "
            "(every client is too small); evaluation is skipped.",
            file=sys.stderr,
        )
    config_lib.write_yaml(config, run.config_path)

    state = process.initialize(config.seed)
    start = checkpoint.latest_round(run.checkpoints) if resume else None
    if start is not None:
        try:
            state = checkpoint.restore_state(run.checkpoints, state, start)
        except checkpoint.CheckpointMismatchError as error:
            raise UsageError(f"--resume: {error}") from None
    start = start or 0
    run.load_rows(start)
    if resume:
        print(f"Resuming {run.path} from round {start} of {config.rounds}.", file=sys.stderr)
    kill_after = os.environ.get(KILL_AFTER_ROUND_ENV)
    title = f"{config.algorithm} on {task.name}, model {config.model or task.default_model}"
    began = time.perf_counter()
    elapsed_before = run.rows[-1]["elapsed_seconds"] if run.rows else 0.0
    progress = RoundProgress(config.rounds, start, config.progress)
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
                config_lib.write_yaml(config, run.config_path)
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
            if test.num_clients and (done % config.eval_every == 0 or done == config.rounds):
                eval_state = evaluator.set_model_weights(evaluator.initialize(), state.model)
                result = evaluator.next(eval_state, test).metrics
                row["eval_loss"], row["eval_accuracy"] = result["loss"], result.get("accuracy")
            row["elapsed_seconds"] = elapsed_before + time.perf_counter() - began
            run.append(row)
            progress.update(row)
            if done % config.checkpoint_every == 0 or done == config.rounds:
                checkpoint.save_state(
                    run.checkpoints, state, done, max_to_keep=config.keep_checkpoints
                )
            if kill_after is not None and done == int(kill_after):
                os.kill(os.getpid(), signal.SIGKILL)
    except KeyboardInterrupt:
        progress.stop()
        print(
            "fedjax-keras: interrupted; continue with: "
            f"fedjax-keras simulate --run-dir {run.path} --resume",
            file=sys.stderr,
        )
        return 130
    progress.stop()
    run.plot(title)
    print_summary(run.rows, run.path, time.perf_counter() - began, title)
    return 0


def main(argv=None) -> int:
    """The ``fedjax-keras`` entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        config, resume = _resolve(argv)
        return simulate(config, resume)
    except UsageError as error:
        message = " ".join(str(error).split())
        print(f"fedjax-keras: error: {message}", file=sys.stderr)
        return 2


def main_exit() -> None:
    """The console script: ``sys.exit(main())``."""
    sys.exit(main())
