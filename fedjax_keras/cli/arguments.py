"""The command line's arguments: the ``simulate`` and ``launch`` parsers and their help.

Every `Config` field is a ``simulate`` flag (``--name-with-dashes``), coerced by
`fedjax_keras.cli.config`; a parse error is a `UsageError` (one line), not
argparse's usage dump.
"""

import argparse

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
    "tensorboard": "also write the metrics as TensorBoard event files to DIR (a sweep: "
    "DIR/run_<k>; needs pip install fedjax_keras[tensorboard])",
}


class LaunchCommand(Exception):
    """``fedjax-keras launch ...`` was parsed (carries its arguments)."""

    def __init__(self, args: dict):
        super().__init__("launch")
        self.options = args


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


def parse_command_line(argv) -> tuple[dict, str | None, bool]:
    """``(flags, config file or None, resume)`` of a ``simulate`` command line.

    Raises:
      LaunchCommand: the command is ``launch`` (it carries the launch's arguments).
      UsageError: a flag or value the command does not accept.
    """
    argv = list(argv)
    if not argv:
        argv = ["simulate"]
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command is None:
        raise UsageError("expected a command: simulate or launch (see fedjax-keras --help).")
    if command == "launch":
        raise LaunchCommand(args)
    config_file = args.pop("config", None)
    resume = args.pop("resume", False)
    flags = {
        name: config_lib.coerce(name, value, "--" + name.replace("_", "-"))
        for name, value in args.items()
    }
    return flags, config_file, resume
