"""The experiment configuration: defaults, YAML/TOML files, flags, validation.

Precedence, lowest first: the defaults below, a ``--config`` file (YAML or
TOML, flat keys named like the flags with ``_`` or ``-``), then the flags
given on the command line. With ``--resume``, the run directory's saved
``config.yaml`` takes the place of the defaults.

A config file that names a key twice is refused (YAML would keep the last
value silently; TOML refuses it too), and every error names the file and the
line where the parser stopped.

One job: the `Config` fields and every rule about their values (coercion of
file and flag values, their checks, the sweep lists); a rule read apart from
the field it constrains is a rule forgotten.
"""

import dataclasses
import math
import os
import re
import typing

import tomllib
import yaml

from fedjax_keras.algorithms import algorithm_names, get_algorithm
from fedjax_keras.cli._errors import UsageError

ALGORITHMS = algorithm_names()
RUNNERS = ("auto", "timed", "vmap", "unroll", "sequential")
TASKS = ("emnist_like", "cifar_like", "synthetic")
FILE_FORMATS = ("auto", "tff_h5", "leaf_json")
# Seeds become JAX PRNG keys and numpy seeds: uint32.
MAX_SEED = 2**32 - 1
# Sizes and counts are int32 on the device.
MAX_INT = 2**31 - 1


@dataclasses.dataclass
class Config:
    """Every setting of ``fedjax-keras simulate``; the flag of field ``a_b`` is ``--a-b``."""

    # Task.
    task: str = "emnist_like"
    task_file: str | None = None
    task_format: str = "auto"
    num_clients: int = 100
    client_size: int = 100
    num_classes: int | None = None
    alpha: float = 1.0
    beta: float = 1.0
    task_seed: int = 0
    test_fraction: float = 0.2
    # Model and algorithm.
    model: str | None = None
    algorithm: str = "fedavg"
    # A comma-separated list of two or more rates (a tuple here) makes a sweep.
    client_lr: float | tuple[float, ...] | None = None
    server_lr: float | tuple[float, ...] | None = None
    mu: float = 0.01
    options: str | None = None
    aggregator: str | None = None
    batch_size: int = 20
    epochs: int = 1
    # Run.
    rounds: int = 60
    cohort_size: int = 10
    chunk_size: str = "auto"
    runner: str = "auto"
    devices: int | None = None
    dropout: float = 0.0
    straggler_rate: float = 0.0
    straggler_work: float = 0.5
    seed: int = 0
    seeds: tuple[int, ...] | None = None
    eval_every: int = 5
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    run_dir: str | None = None
    progress: bool = True
    compile_cache: bool = True
    tensorboard: str | None = None


FIELDS = {field.name: field for field in dataclasses.fields(Config)}
# Settings that also take a comma-separated list (a sweep), and their items' type.
LIST_FIELDS = {"client_lr": float, "server_lr": float, "seeds": int}
# The algorithms a sweep can run: built from a client and a server optimizer whose
# learning rates reach the clients through the broadcast (docs/sweeps.md).
SWEEP_ALGORITHMS = ("fedavg", "fedavg_unweighted", "fedprox")
# What a resumed run may change: how long and how it is recorded, and how clients
# are run (chunk size and runner change no number beyond float32 rounding).
CHANGEABLE_ON_RESUME = (
    "rounds",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "progress",
    "compile_cache",
    "tensorboard",
    "chunk_size",
    "runner",
)
# Settings that define the experiment: a resumed run may not change them.
FIXED_ON_RESUME = tuple(
    name for name in FIELDS if name not in CHANGEABLE_ON_RESUME and name != "run_dir"
)


def _base_type(name: str) -> type:
    if name in LIST_FIELDS:
        return LIST_FIELDS[name]
    annotation = FIELDS[name].type
    return next(a for a in typing.get_args(annotation) or (annotation,) if a is not type(None))


def _optional(name: str) -> bool:
    return type(None) in typing.get_args(FIELDS[name].type)


def coerce(name: str, value, source: str):
    """``value`` converted to field ``name``'s type, or UsageError naming ``source``."""
    if name not in FIELDS:
        raise UsageError(f"{source}: unknown setting {name!r}; expected one of {sorted(FIELDS)}.")
    if value is None:
        if not _optional(name):
            raise UsageError(f"{source}: {name} cannot be empty.")
        return None
    kind = _base_type(name)
    if name in LIST_FIELDS:
        return _coerce_list(name, value, source)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", value):
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            try:
                return float(value)
            except (ValueError, OverflowError):
                pass
    else:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    expected = {bool: "true or false", int: "an int", float: "a number"}.get(kind, "a string")
    raise UsageError(f"{source}: {name} must be {expected}; received {value!r}.")


def _coerce_list(name: str, value, source: str):
    """A list field's value: ``'0.05,0.1'`` -> ``(0.05, 0.1)``; one rate stays a float.

    ``seeds`` is always a tuple. A YAML list is refused, as for every setting:
    a config file spells a list as the flag does, ``client_lr: "0.05,0.1"``.
    """
    kind = LIST_FIELDS[name]
    items = value.split(",") if isinstance(value, str) else [value]
    parsed = [_list_item(kind, item) for item in items]
    if any(item is None for item in parsed):
        example = "0,1,2" if kind is int else "0.05,0.1"
        single = "" if kind is int else "a number or "
        raise UsageError(
            f"{source}: {name} must be {single}a comma-separated list of "
            f"{'ints' if kind is int else 'numbers'} (e.g. {example}); received {value!r}."
        )
    if name == "seeds" or len(parsed) > 1:
        return tuple(parsed)
    return parsed[0]


def _list_item(kind: type, item):
    """One item of a list field as ``kind``, or None when it is not one."""
    if isinstance(item, bool):
        return None
    if kind is int:
        if isinstance(item, int):
            return item
        if isinstance(item, str) and re.fullmatch(r"\s*[+-]?[0-9]+\s*", item):
            return int(item)
        return None
    if isinstance(item, (int, float, str)):
        try:
            return float(item)
        except (ValueError, OverflowError):
            return None
    return None


def list_values(value) -> tuple:
    """A list field's values as a tuple (one value: a tuple of one; None: empty)."""
    if value is None:
        return ()
    return tuple(value) if isinstance(value, tuple) else (value,)


def sweep_size(config: "Config") -> int | None:
    """The number of runs of a sweep, or None for a single run.

    A sweep is asked for by ``--seeds`` or by two or more values of
    ``--client-lr`` or ``--server-lr``. Each list holds one value (for every
    run) or one per run, as `fedjax_keras.sweep` broadcasts them.

    Raises:
      UsageError: lists of different lengths (other than 1).
    """
    lists = {
        "--" + name.replace("_", "-"): list_values(getattr(config, name))
        for name in ("seeds", "client_lr", "server_lr")
    }
    if config.seeds is None and not any(len(v) > 1 for v in lists.values()):
        return None
    runs = max(len(v) for v in lists.values())
    longest = next(flag for flag, v in lists.items() if len(v) == runs)
    for flag, values in lists.items():
        if len(values) not in (0, 1, runs):
            raise UsageError(
                f"{flag}: {len(values)} values, but {longest} gives {runs} runs; expected "
                f"one value (for every run) or {runs}."
            )
    return runs


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a mapping that names a key twice."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark.line + 1)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if first != key_node.start_mark.line + 1:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"key {key!r} appears twice (lines {first} and "
                    f"{key_node.start_mark.line + 1}); keep one",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _parse_error(path: str, error: Exception) -> str:
    """One line: what the YAML/TOML parser found wrong, and at which line."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        problem = error.problem or error.context or "invalid YAML"
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown line"
        return f"{path} is not valid YAML at {where}: {problem}"
    if isinstance(error, tomllib.TOMLDecodeError):
        return f"{path} is not valid TOML: {str(error).strip().splitlines()[0]}"
    return f"{path} is not valid YAML: {str(error).strip().splitlines()[0]}"


def read_config_file(path: str) -> dict:
    """The settings of a YAML (.yaml/.yml) or TOML (.toml) file, keys normalised to ``a_b``.

    Raises:
      UsageError: the file is missing, unreadable, not valid YAML/TOML (the
        message gives the line), names a key twice, or holds an unknown key or
        a value of the wrong type.
    """
    if not os.path.isfile(path):
        raise UsageError(f"--config: {path!r} does not exist; expected a .yaml or .toml file.")
    if not path.endswith((".toml", ".yaml", ".yml")):
        raise UsageError(f"--config: {path!r} must end in .yaml, .yml or .toml.")
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        else:
            with open(path, encoding="utf-8") as f:
                raw = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
            raw = {} if raw is None else raw
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        raise UsageError(f"--config: {_parse_error(path, error)}.") from None
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise UsageError(f"--config: cannot read {path!r} ({reason}).") from None
    if not isinstance(raw, dict):
        raise UsageError(
            f"--config: {path} must hold a mapping of settings; received {type(raw).__name__}."
        )
    settings = {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        settings[name] = coerce(name, value, f"--config {path}")
    return settings


def resolve(base: dict, file_settings: dict, flag_settings: dict) -> Config:
    """Merges the three layers and validates the result."""
    config = Config(**{**base, **file_settings, **flag_settings})
    validate(config)
    return config


def coerce_int_flag(flag: str, value, low: int, high: int) -> int:
    """``value`` as an int in [low, high], or a UsageError naming ``flag``."""
    text = str(value).strip()
    if not re.fullmatch(r"[+-]?[0-9]+", text) or not low <= int(text) <= high:
        raise UsageError(f"{flag}: expected an int >= {low} and <= {high}; received {value!r}.")
    return int(text)


def parse_options(text: str | None, accepted: dict, algorithm: str) -> dict:
    """``'a=1,b=x'`` -> ``{'a': 1.0, 'b': 'x'}`` with ``accepted``'s defaults filled in.

    Raises:
      UsageError: a malformed pair, or a name the algorithm does not take.
    """
    values = dict(accepted)
    for pair in (text or "").split(","):
        if not pair.strip():
            continue
        name, sep, raw = pair.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name or not raw:
            raise UsageError(f"--options: expected NAME=VALUE[,NAME=VALUE...]; received {pair!r}.")
        if name not in accepted:
            takes = ", ".join(f"{k} (default {v!r})" for k, v in accepted.items()) or "none"
            raise UsageError(f"--options: {algorithm} has no option {name!r}; it takes: {takes}.")
        default = accepted[name]
        try:
            if isinstance(default, bool):
                if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(raw)
                values[name] = raw.lower() in ("true", "1", "yes")
            elif isinstance(default, int):
                values[name] = int(raw)
            elif isinstance(default, float):
                values[name] = float(raw)
                if not math.isfinite(values[name]):
                    raise ValueError(raw)
            else:
                values[name] = raw
        except ValueError:
            raise UsageError(
                f"--options: {name} must be {type(default).__name__} like its default "
                f"{default!r}; received {raw!r}."
            ) from None
    return values


def _check_writable_folder(path: str, flag: str) -> None:
    """UsageError unless ``path`` is, or can be made, a writable directory (nothing is made)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"{flag}: {path!r} is a file; expected a directory.")
    parent = os.path.abspath(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{flag}: {path!r} is below the file {parent!r}; expected a directory.")
    if not os.access(parent, os.W_OK):
        raise UsageError(f"{flag}: cannot write in {parent!r}; expected a writable directory.")


def validate(config: Config) -> None:
    """Raises UsageError for a value out of range or not among the choices."""
    for name, value in to_dict(config).items():
        if isinstance(value, str) and "\x00" in value:
            raise UsageError(
                f"--{name.replace('_', '-')}: {value!r} holds a NUL character; expected a "
                "name or path without one."
            )
    if config.task not in TASKS:
        raise UsageError(
            f"--task: unknown task {config.task!r}; expected one of {list(TASKS)} "
            "(or --task-file PATH for a TFF .h5 file or LEAF .json data)."
        )
    if config.tensorboard:
        _check_writable_folder(config.tensorboard, "--tensorboard")
    if config.task_format not in FILE_FORMATS:
        raise UsageError(
            f"--task-format: expected one of {list(FILE_FORMATS)}; received {config.task_format!r}."
        )
    if config.algorithm not in algorithm_names():
        raise UsageError(
            f"--algorithm: unknown algorithm {config.algorithm!r}; "
            f"expected one of {list(algorithm_names())}."
        )
    if config.runner not in RUNNERS:
        raise UsageError(f"--runner: expected one of {list(RUNNERS)}; received {config.runner!r}.")
    if config.chunk_size not in ("auto", "none") and not (
        re.fullmatch("[0-9]+", config.chunk_size) and 0 < int(config.chunk_size) <= MAX_INT
    ):
        raise UsageError(
            "--chunk-size: expected a positive int, 'auto' or 'none'; "
            f"received {config.chunk_size!r}."
        )
    for name in (
        "num_clients",
        "client_size",
        "batch_size",
        "epochs",
        "cohort_size",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
    ):
        _check_int(name, getattr(config, name), 1, MAX_INT)
    _check_int("rounds", config.rounds, 0, MAX_INT)
    _check_int("seed", config.seed, 0, MAX_SEED)
    _check_int("task_seed", config.task_seed, 0, MAX_SEED)
    if config.num_classes is not None:
        _check_int("num_classes", config.num_classes, 2, MAX_INT)
    for name in ("client_lr", "server_lr"):
        for value in list_values(getattr(config, name)):
            if not (math.isfinite(value) and value > 0):
                raise UsageError(
                    f"--{name.replace('_', '-')}: expected a finite number > 0 (or a "
                    f"comma-separated list of them); received {value!r}."
                )
    if config.seeds is not None and not config.seeds:
        raise UsageError("--seeds: expected a comma-separated list of ints; received none.")
    for seed in list_values(config.seeds):
        _check_int("seeds", seed, 0, MAX_SEED)
    _check_sweep(config)
    for name in ("mu", "alpha", "beta"):
        value = getattr(config, name)
        if not (math.isfinite(value) and value >= 0):
            raise UsageError(
                f"--{name.replace('_', '-')}: expected a finite number >= 0; received {value!r}."
            )
    if not 0 < config.test_fraction < 1:
        raise UsageError(
            f"--test-fraction: expected a number in (0, 1); received {config.test_fraction!r}."
        )
    if config.devices is not None:
        _check_int("devices", config.devices, 1, 4096)
    for name in ("dropout", "straggler_rate"):
        value = getattr(config, name)
        if not 0 <= value <= 1:
            raise UsageError(
                f"--{name.replace('_', '-')}: expected a probability in [0, 1]; received {value!r}."
            )
    if not 0 < config.straggler_work <= 1:
        raise UsageError(
            f"--straggler-work: expected a fraction in (0, 1]; received {config.straggler_work!r}."
        )
    entry = get_algorithm(config.algorithm)
    parse_options(config.options, dict(entry.options), config.algorithm)
    if config.aggregator is not None:
        from fedjax_keras.cli._aggregator_spec import build_aggregator, privacy_accountant

        build_aggregator(config.aggregator, config.cohort_size)
        privacy_accountant(config.aggregator, config.cohort_size, max(config.num_clients, 1))


def _check_sweep(config: Config) -> None:
    """A sweep's lists agree in length, and its runner and algorithm can sweep."""
    if sweep_size(config) is None:
        return
    if config.runner not in ("auto", "vmap"):
        raise UsageError(
            "--runner: a sweep (--seeds, or a list in --client-lr or --server-lr) runs its "
            f"runs vmapped together; expected vmap or auto, received {config.runner!r}."
        )
    if config.algorithm not in SWEEP_ALGORITHMS:
        raise UsageError(
            f"--algorithm: a sweep runs {', '.join(SWEEP_ALGORITHMS)} (built from a client "
            f"and a server optimizer); received {config.algorithm!r}. Run the others one "
            "value at a time."
        )


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UsageError(
            f"--{name.replace('_', '-')}: expected an int >= {low} and <= {high}; "
            f"received {value!r}."
        )


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def write_yaml(config: Config, path: str) -> None:
    # Lists as the flags spell them ("0.05,0.1"), which is what a config file takes.
    settings = {
        name: ",".join(str(v) for v in value) if isinstance(value, tuple) else value
        for name, value in to_dict(config).items()
    }
    with open(path, "w") as f:
        yaml.safe_dump(settings, f, sort_keys=False)
