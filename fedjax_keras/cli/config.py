"""The experiment configuration: defaults, YAML/TOML files, flags, validation.

Precedence, lowest first: the defaults below, a ``--config`` file (YAML or
TOML, flat keys named like the flags with ``_`` or ``-``), then the flags
given on the command line. With ``--resume``, the run directory's saved
``config.yaml`` takes the place of the defaults.
"""

import dataclasses
import os
import typing

import tomllib
import yaml

from fedjax_keras.cli._errors import UsageError

ALGORITHMS = (
    "fedavg",
    "fedavg_unweighted",
    "fedprox",
    "fedsgd",
    "scaffold",
    "fedadam",
    "fedyogi",
    "fedadagrad",
)
RUNNERS = ("auto", "timed", "vmap", "unroll", "sequential")


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
    client_lr: float | None = None
    server_lr: float | None = None
    mu: float = 0.01
    batch_size: int = 20
    epochs: int = 1
    # Run.
    rounds: int = 60
    cohort_size: int = 10
    chunk_size: str = "auto"
    runner: str = "auto"
    seed: int = 0
    eval_every: int = 5
    checkpoint_every: int = 10
    keep_checkpoints: int = 3
    run_dir: str | None = None
    progress: bool = True
    compile_cache: bool = True


FIELDS = {field.name: field for field in dataclasses.fields(Config)}
# Settings that define the experiment: a resumed run may not change them.
FIXED_ON_RESUME = tuple(
    name
    for name in FIELDS
    if name
    not in (
        "rounds",
        "eval_every",
        "checkpoint_every",
        "keep_checkpoints",
        "run_dir",
        "progress",
        "compile_cache",
        "chunk_size",
        "runner",
    )
)


def _base_type(name: str) -> type:
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
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    else:
        if isinstance(value, (str, int)) and not isinstance(value, bool):
            return str(value)
    raise UsageError(f"{source}: {name} must be a {kind.__name__}; received {value!r}.")


def read_config_file(path: str) -> dict:
    """The settings of a YAML (.yaml/.yml) or TOML (.toml) file, keys normalised to ``a_b``."""
    if not os.path.isfile(path):
        raise UsageError(f"--config: {path!r} does not exist; expected a .yaml or .toml file.")
    try:
        if path.endswith(".toml"):
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        elif path.endswith((".yaml", ".yml")):
            with open(path) as f:
                raw = yaml.safe_load(f) or {}
        else:
            raise UsageError(f"--config: {path!r} must end in .yaml, .yml or .toml.")
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0]
        raise UsageError(
            f"--config: {path} is not valid {'TOML' if path.endswith('.toml') else 'YAML'} "
            f"({first})."
        ) from None
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


def validate(config: Config) -> None:
    """Raises UsageError for a value out of range or not among the choices."""
    if config.algorithm not in ALGORITHMS:
        raise UsageError(
            f"--algorithm: unknown algorithm {config.algorithm!r}; "
            f"expected one of {list(ALGORITHMS)}."
        )
    if config.runner not in RUNNERS:
        raise UsageError(f"--runner: expected one of {list(RUNNERS)}; received {config.runner!r}.")
    if config.chunk_size not in ("auto", "none") and not (
        config.chunk_size.isdigit() and int(config.chunk_size) > 0
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
        value = getattr(config, name)
        if value < 1:
            raise UsageError(
                f"--{name.replace('_', '-')}: expected an int >= 1; received {value!r}."
            )
    if config.rounds < 0:
        raise UsageError(f"--rounds: expected an int >= 0; received {config.rounds!r}.")
    if config.num_classes is not None and config.num_classes < 2:
        raise UsageError(f"--num-classes: expected an int >= 2; received {config.num_classes!r}.")
    for name in ("client_lr", "server_lr"):
        value = getattr(config, name)
        if value is not None and not value > 0:
            raise UsageError(
                f"--{name.replace('_', '-')}: expected a number > 0; received {value!r}."
            )
    if not config.mu >= 0:
        raise UsageError(f"--mu: expected a number >= 0; received {config.mu!r}.")
    if not 0 < config.test_fraction < 1:
        raise UsageError(
            f"--test-fraction: expected a number in (0, 1); received {config.test_fraction!r}."
        )


def to_dict(config: Config) -> dict:
    return dataclasses.asdict(config)


def write_yaml(config: Config, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(to_dict(config), f, sort_keys=False)
