"""One run's round loop: sample, train, evaluate, record, checkpoint, stop on request.

The loop samples the cohort of round ``r`` with seed ``(seed, r)`` and takes
every other random choice from the state (seed and round counter), so a run
resumed from a checkpoint repeats the uninterrupted run bit for bit.
Checkpoints are in `fedjax_keras.cli.checkpoints`, Ctrl-C in
`fedjax_keras.cli.interrupt`; a sweep's loop is `fedjax_keras.cli.sweep`.
"""

import sys
import time
import warnings

from fedjax_keras.cli import checkpoints, distributed
from fedjax_keras.cli.interrupt import StopRequest


def run_single(config, resume: bool, run, stop: StopRequest) -> int:
    """Trains and evaluates one run of ``config`` round by round; returns the exit status.

    Args:
      config: the run's `Config` (its ``runner`` is updated when 'auto' chose one).
      resume: continue from the run directory's newest checkpoint.
      run: the `RunDir` (or, off the primary process, a `NullRun`).
      stop: the `StopRequest` that Ctrl-C sets.
    """
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

    state = process.initialize(config.seed)
    start = 0
    if resume:
        state, start = checkpoints.restore(run, state, config.rounds)
    # After the restore: a refused --resume leaves config.yaml as it was.
    run.write_config(config)
    if config.tensorboard:
        run.log_to_tensorboard(config.tensorboard)
    run.load_rows(start)
    if resume and distributed.is_primary():
        print(f"Resuming {run.path} from round {start} of {config.rounds}.", file=sys.stderr)
    if stop.requested:
        return checkpoints.interrupted(run, f"before round {start + 1}")
    title = f"{config.algorithm} on {task.name}, model {config.model or task.default_model}"
    began = time.perf_counter()
    elapsed_before = run.rows[-1]["elapsed_seconds"] if run.rows else 0.0
    progress = RoundProgress(config.rounds, start, config.progress and distributed.is_primary())

    def play_round(round_num, state):
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
        return state

    status = checkpoints.play_rounds(
        run,
        config,
        state,
        start,
        play_round,
        # Every process must leave the loop at the same round.
        stopping=lambda: distributed.any_process(stop.requested),
        progress=progress,
    )
    if status is not None:
        return status
    if not distributed.is_primary():
        return 0
    run.plot(title)
    print_summary(run.rows, run.path, time.perf_counter() - began, title)
    if stop.requested:  # Ctrl-C during the plot or the summary: the rounds are all done
        return checkpoints.interrupted(
            run, f"after the last round ({config.rounds}, checkpoint saved)"
        )
    return 0
