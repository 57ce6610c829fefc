"""``fedjax-keras simulate`` with ``--seeds`` or lists of learning rates: one sweep of K runs.

The K runs train together as one `fedjax_keras.sweep` (one compiled program
per round for all of them, vmapped over a leading runs axis). Run k is the
single run of seed ``seeds[k]`` and its learning rates: its model starts from
the weights ``--seed seeds[k]`` gives, its cohort of round ``r`` is sampled
with seed ``(seeds[k], r)``, and its metrics (train loss each round, final
weights) equal that run's to float tolerance. The checkpoints hold all runs'
stacked state, so ``--resume`` continues the whole sweep.
"""

import dataclasses
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp

from fedjax_keras.cli import checkpoints
from fedjax_keras.cli._errors import UsageError
from fedjax_keras.cli.config import list_values
from fedjax_keras.cli.interrupt import StopRequest
from fedjax_keras.data import share_one_source


def run_sweep(config, resume: bool, run, stop: StopRequest) -> int:
    """Runs (or resumes) the sweep of ``config`` in the run directory ``run``; the exit status."""
    from fedjax_keras.algorithms import build_fed_eval
    from fedjax_keras.cli.experiment import (
        build_model,
        build_sweep,
        engine_options,
        eval_population,
        sweep_runs,
    )
    from fedjax_keras.cli.progress import RoundProgress, print_sweep_summary
    from fedjax_keras.cli.run_dir import RunDir, plot_sweep
    from fedjax_keras.cli.tasks import load_tasks
    from fedjax_keras.errors import PaddingWarning

    if jax.process_count() > 1:
        raise UsageError(
            "--seeds: a sweep runs in one process; run it without 'launch' (or run each "
            "setting as its own multi-process run)."
        )
    # Each run's data split, like its model's initial weights, is its seed's (load_tasks).
    tasks = load_tasks(config, dict.fromkeys(list_values(config.seeds) or (config.seed,)))
    task = next(iter(tasks.values()))
    if config.client_lr is None:
        config.client_lr = task.default_client_lr
    runs = sweep_runs(config)
    # The sweep vmaps the Vmap executor over the runs: 'auto' is vmap, recorded for --resume.
    config.runner = "vmap"
    models = {seed: build_model(dataclasses.replace(config, seed=seed), task) for seed in tasks}
    model = models[runs[0]["seed"]]
    sweep = build_sweep(config, model, task)
    evaluator = build_fed_eval(
        model, batch_size=max(config.batch_size, 50), **engine_options(config)
    )
    trains = share_one_source([tasks[r["seed"]].train for r in runs])
    tests = share_one_source([eval_population(tasks[r["seed"]]) for r in runs])
    if tests[0].num_clients == 0:
        print(
            f"fedjax-keras: note: --test-fraction {config.test_fraction} holds out no example "
            "(every client is too small); evaluation is skipped.",
            file=sys.stderr,
        )
    members = [
        RunDir.sweep_member(os.path.join(run.path, f"run_{k:02d}")) for k in range(len(runs))
    ]

    states = sweep.initialize()
    states = states.replace(
        model=jax.tree.map(
            lambda *leaves: jnp.stack([jnp.asarray(leaf) for leaf in leaves]),
            *(models[r["seed"]].initial_weights for r in runs),
        )
    )
    start = 0
    if resume:
        states, start = checkpoints.restore(run, states, config.rounds)
    # After the restore: a refused --resume leaves config.yaml as it was.
    run.write_config(config)
    for k, member in enumerate(members):
        if config.tensorboard:
            member.log_to_tensorboard(os.path.join(config.tensorboard, f"run_{k:02d}"))
        member.load_rows(start)
    if resume:
        print(f"Resuming {run.path} from round {start} of {config.rounds}.", file=sys.stderr)
    if stop.requested:
        return checkpoints.interrupted(run, f"before round {start + 1}")
    title = (
        f"{config.algorithm} on {task.name}, model {config.model or task.default_model}, "
        f"{len(runs)} runs"
    )
    began = time.perf_counter()
    elapsed_before = members[0].rows[-1]["elapsed_seconds"] if members[0].rows else 0.0
    progress = RoundProgress(config.rounds, start, config.progress)

    def play_round(round_num, states):
        tic = time.perf_counter()
        cohorts = [
            train.sample_clients(config.cohort_size, seed=[r["seed"], round_num])
            for train, r in zip(trains, runs)
        ]
        output = sweep.next(states, cohorts)
        states, metrics = output.state, output.metrics
        seconds = time.perf_counter() - tic
        done = round_num + 1
        evaluate = tests[0].num_clients and (done % config.eval_every == 0 or done == config.rounds)
        rows = []
        for k, settings in enumerate(runs):
            row = _row(metrics, k, done, seconds, config.cohort_size * len(runs))
            run_state = sweep.run_state(states, k)
            for hook in sweep.process.options.host_metrics:  # epsilon of a 'dp' stage
                extra = hook(run_state, {name: v[k] for name, v in metrics.items()})
                if "epsilon" in extra:
                    row["epsilon"], row["delta"] = extra["epsilon"], extra["delta"]
            if evaluate:
                eval_state = evaluator.set_model_weights(evaluator.initialize(), run_state.model)
                with warnings.catch_warnings():
                    # The evaluation's batch size is the command line's choice, not the user's.
                    warnings.simplefilter("ignore", PaddingWarning)
                    result = evaluator.next(eval_state, tests[k]).metrics
                row["eval_loss"], row["eval_accuracy"] = result["loss"], result.get("accuracy")
            row["elapsed_seconds"] = elapsed_before + time.perf_counter() - began
            row.update(settings)
            members[k].append(row)
            rows.append(row)
        progress.update(_mean_row(rows))
        return states

    try:
        status = checkpoints.play_rounds(
            run,
            config,
            states,
            start,
            play_round,
            stopping=lambda: stop.requested,
            progress=progress,
        )
    finally:
        for member in members:
            member.release()  # a member holds no lock: this closes its TensorBoard file
    if status is not None:
        return status
    labels = [
        f"run_{k:02d}: seed {r['seed']}, client lr {r['client_lr']:g}, server lr {r['server_lr']:g}"
        for k, r in enumerate(runs)
    ]
    plot_sweep(os.path.join(run.path, "sweep.png"), [m.rows for m in members], labels, title)
    print_sweep_summary(
        runs, [m.rows for m in members], run.path, time.perf_counter() - began, title
    )
    if stop.requested:  # Ctrl-C during the plot or the summary: the rounds are all done
        return checkpoints.interrupted(
            run, f"after the last round ({config.rounds}, checkpoint saved)"
        )
    return 0


def _row(metrics: dict, k: int, done: int, seconds: float, clients: int) -> dict:
    """Run ``k``'s row of the round, as a single run logs it (speeds: the whole sweep's)."""
    num_examples = int(metrics["num_examples"][k])
    return {
        "round": done,
        "train_loss": float(metrics["loss"][k]),
        "train_accuracy": float(metrics["accuracy"][k]) if "accuracy" in metrics else None,
        "eval_loss": None,
        "eval_accuracy": None,
        "num_clients": int(metrics["num_clients"][k]),
        "num_examples": num_examples,
        "num_dropped_clients": int(metrics["num_dropped_clients"][k]),
        "round_seconds": seconds,
        "clients_per_second": clients / seconds,
        "examples_per_second": float(sum(metrics["num_examples"])) / seconds,
    }


def _mean_row(rows: list[dict]) -> dict:
    """The progress line's row: every run's metrics averaged."""

    def mean(name):
        values = [row[name] for row in rows if row.get(name) is not None]
        return sum(values) / len(values) if len(values) == len(rows) else None

    return {
        **rows[0],
        **{
            name: mean(name)
            for name in ("train_loss", "train_accuracy", "eval_loss", "eval_accuracy")
        },
    }
