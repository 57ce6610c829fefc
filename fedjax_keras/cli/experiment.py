"""From a `Config` to a model and a federated process (the algorithm registry)."""

import warnings

import jax
import keras
import numpy as np
from jax.sharding import Mesh

from fedjax_keras import algorithms
from fedjax_keras.cli._aggregator_spec import (
    build_aggregator,
    privacy_accountant,
    unaccounted_noise_note,
)
from fedjax_keras.cli._errors import UsageError
from fedjax_keras.cli.config import list_values, parse_options, sweep_size
from fedjax_keras.cli.models import resolve_model
from fedjax_keras.cli.tasks import Task
from fedjax_keras.data import UnreliableClients
from fedjax_keras.models import Model, from_keras_model


def build_model(config, task: Task) -> Model:
    """The task's model wrapped with `from_keras_model`, checked against the labels.

    Raises:
      UsageError: the model does not accept the inputs, or its output shape
        does not fit the labels (``[batch, num_classes]`` logits for labels
        [batch], ``[batch, steps, vocab]`` for label sequences [batch, steps]).
    """
    name = config.model or task.default_model
    x = task.train.examples["x"][:2]
    integer_inputs = np.asarray(x).dtype.kind in "iu"
    net = resolve_model(name, task.input_shape, task.num_classes, config.seed, integer_inputs)
    y = task.train.examples["y"][:2]
    try:
        model = from_keras_model(
            net,
            {"x": x, "y": y},
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        )
        output = jax.eval_shape(lambda w: model.apply(w, x), model.initial_weights)
    except UsageError:
        raise
    except Exception as error:  # noqa: BLE001 (any failure here is the model not fitting)
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(
            f"--model {name}: it does not accept the task's inputs x {list(x.shape[1:])} "
            f"{x.dtype} ({first})."
        ) from None
    shape = tuple(getattr(output, "shape", ()))
    expected = (len(x),) + tuple(y.shape[1:])
    if len(shape) != len(expected) + 1 or shape[:-1] != expected or shape[-1] < task.num_classes:
        raise UsageError(
            f"--model {name}: its output shape {list(shape)} does not fit the labels; the task "
            f"{task.name!r} has labels {list(y.shape[1:]) or 'scalar'} "
            f"in 0..{task.num_classes - 1}, "
            f"so the model must output logits [batch{''.join(f', {d}' for d in expected[1:])}, "
            f"{task.num_classes}]."
        )
    return model


def build_process(config, model: Model, task: Task):
    """The training process of ``config.algorithm`` (from the algorithm registry)."""
    entry = algorithms.get_algorithm(config.algorithm)
    engine = _engine(config, task, entry)
    settings = algorithms.AlgorithmSettings(
        client_lr=config.client_lr,
        server_lr=config.server_lr,
        population_size=task.train.num_clients,
        options=_algorithm_options(config, entry),
    )
    return entry.make(model, settings, **engine)


# How a sweep builds each algorithm of config.SWEEP_ALGORITHMS from its two
# injected optimizers: ``(model, client_opt, server_opt, options, engine)``.
_SWEEP_BUILDERS = {
    "fedavg": lambda model, c, s, options, engine: algorithms.build_weighted_fed_avg(
        model, c, s, **engine
    ),
    "fedavg_unweighted": lambda model, c, s, options, engine: algorithms.build_unweighted_fed_avg(
        model, c, s, **engine
    ),
    "fedprox": lambda model, c, s, options, engine: algorithms.build_fed_prox(
        model, c, s, mu=options["mu"], **engine
    ),
}


def sweep_runs(config) -> list[dict]:
    """Each run of ``config``'s sweep: ``{'seed', 'client_lr', 'server_lr'}``, in order.

    A list of one value is every run's (a missing ``--seeds`` means ``--seed``
    for every run; a missing ``--server-lr`` the algorithm's default).
    """
    runs = sweep_size(config)
    server_lr = config.server_lr
    if server_lr is None:
        server_lr = algorithms.get_algorithm(config.algorithm).default_server_lr
    values = {
        "seed": list_values(config.seeds) or (config.seed,),
        "client_lr": list_values(config.client_lr),
        "server_lr": list_values(server_lr),
    }
    return [{name: v[k % len(v)] for name, v in values.items()} for k in range(runs)]


def build_sweep(config, model: Model, task: Task) -> algorithms.Sweep:
    """The `fedjax_keras.sweep` of ``config``'s runs (``--seeds`` and rate lists).

    Every run shares the algorithm, its options and the engine settings; runs
    differ in their seed and learning rates (`sweep_runs`). ``config.client_lr``
    must be set (the task's default resolved).
    """
    entry = algorithms.get_algorithm(config.algorithm)
    # A sweep gathers every run's batches from one copy of the examples on the device.
    engine = {**_engine(config, task, entry), "data_placement": "device"}
    options = _algorithm_options(config, entry)
    build = _SWEEP_BUILDERS[entry.name]
    runs = sweep_runs(config)
    return algorithms.sweep(
        lambda client_opt, server_opt: build(model, client_opt, server_opt, options, engine),
        seeds=[run["seed"] for run in runs],
        client_learning_rates=[run["client_lr"] for run in runs],
        server_learning_rates=[run["server_lr"] for run in runs],
    )


def _engine(config, task: Task, entry) -> dict:
    engine = {**engine_options(config), "batch_size": config.batch_size, "epochs": config.epochs}
    if config.dropout or config.straggler_rate:
        engine["unreliable_clients"] = UnreliableClients(
            config.dropout, config.straggler_rate, config.straggler_work
        )
    if config.aggregator is not None:
        engine["aggregator"] = build_aggregator(config.aggregator, config.cohort_size)
        acc = privacy_accountant(config.aggregator, config.cohort_size, task.train.num_clients)
        if acc is not None:
            engine["host_metrics"] = (acc,)
        note = unaccounted_noise_note(config.aggregator, config.cohort_size)
        if note is not None:
            warnings.warn(note, UserWarning, stacklevel=2)
    if entry.epochs_must_be_one and config.epochs != 1:
        raise UsageError(
            f"--epochs: {entry.name} computes one gradient per client; "
            f"expected 1, received {config.epochs}."
        )
    return engine


def _algorithm_options(config, entry) -> dict:
    # --mu predates --options: it sets FedProx's mu unless --options does. Only FedProx's:
    # other algorithms' options that share a flag's name (FedNova's mu, FedDyn's alpha,
    # which is not the task's Dirichlet --alpha) keep their own defaults.
    legacy = {"mu": config.mu} if entry.name == "fedprox" else {}
    return parse_options(config.options, {**dict(entry.options), **legacy}, config.algorithm)


def engine_options(config) -> dict:
    """The engine options every process of a run shares: chunking, executor, devices."""
    chunk = {"auto": "auto", "none": None}.get(config.chunk_size)
    options = {
        "chunk_size": chunk if config.chunk_size in ("auto", "none") else int(config.chunk_size),
        "runner": config.runner,
    }
    if config.devices is not None:
        # The first N devices of every process (N CPU devices are forced by
        # `select_devices` when there is no accelerator).
        by_process: dict = {}
        for device in jax.devices():
            by_process.setdefault(device.process_index, []).append(device)
        fewest = min(len(devices) for devices in by_process.values())
        if fewest < config.devices:
            raise UsageError(
                f"--devices: {config.devices} requested but only {fewest} "
                f"{jax.devices()[0].platform} device(s) are available per process."
            )
        chosen = [d for p in sorted(by_process) for d in by_process[p][: config.devices]]
        options["mesh"] = Mesh(np.array(chosen), ("clients",))
    return options


def eval_population(task: Task):
    """The test clients that hold examples (empty test clients add nothing)."""
    return task.test.subset(np.flatnonzero(task.test.client_sizes > 0))
