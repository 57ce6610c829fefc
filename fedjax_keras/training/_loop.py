"""`run_experiment`: the round loop of a research script, resumable bit for bit.

Round ``r``'s cohort is ``train_data.sample_clients(clients_per_round,
seed=[seed, r])`` (or ``sampler(r)``), and every other random choice comes from
the state (its seed and round counter), so an experiment resumed from its
newest checkpoint repeats the uninterrupted one exactly: the same weights, the
same rows. The rows of the rounds done are kept next to the checkpoints
(``history.jsonl``), so callbacks resume too.
"""

import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence

import numpy as np

from fedjax_keras import checkpoint
from fedjax_keras._numbers import is_integer
from fedjax_keras.training._callbacks import Callback

HISTORY_FILE = "history.jsonl"


def _positive_int(value, name: str) -> int:
    if not is_integer(value) or value < 1:
        raise ValueError(f"{name} must be a positive int; received {value!r}.")
    return int(value)


def _plain(value):
    """A metric as a JSON value: a number, a string, or a list of numbers."""
    if isinstance(value, str):
        return value
    array = np.asarray(value)
    if array.ndim:
        return array.tolist()
    if array.dtype.kind in "iub":
        return int(array)
    return float(array)


def _check_callbacks(callbacks) -> tuple:
    callbacks = tuple(callbacks)
    for index, callback in enumerate(callbacks):
        if not all(callable(getattr(callback, m, None)) for m in ("on_begin", "on_round_end")):
            raise TypeError(
                f"callbacks[{index}] is a {type(callback).__name__}; expected a "
                "fedjax_keras.training.Callback (on_begin, on_round_end, on_end)."
            )
    return callbacks


def _sampler(train_data, clients_per_round, sampler, seed):
    if (clients_per_round is None) == (sampler is None):
        raise ValueError("run_experiment takes exactly one of clients_per_round and sampler.")
    if sampler is not None:
        if not callable(sampler):
            raise TypeError(f"sampler must be a function round -> cohort; received {sampler!r}.")
        return sampler
    if train_data is None:
        raise ValueError("clients_per_round needs train_data to sample from.")
    k = _positive_int(clients_per_round, "clients_per_round")
    return lambda round_num: train_data.sample_clients(k, seed=[seed, round_num])


def _evaluate(process, evaluator, eval_data, state) -> dict:
    eval_state = evaluator.set_model_weights(
        evaluator.initialize(), process.get_model_weights(state)
    )
    return {
        f"eval/{k}": _plain(v) for k, v in evaluator.next(eval_state, eval_data).metrics.items()
    }


class _History:
    """The rows of the rounds done, kept beside the checkpoints for a resume."""

    def __init__(self, directory):
        self.path = None if directory is None else os.path.join(directory, HISTORY_FILE)
        self.rows: list[dict] = []

    def load(self, start: int) -> None:
        if self.path is None or not os.path.exists(self.path):
            return
        with open(self.path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        self.rows = [row for row in rows if row["round"] <= start]

    def append(self, row: dict) -> None:
        self.rows.append(row)
        if self.path is not None:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.rows)
            os.replace(tmp, self.path)


def _start(process, seed, checkpoint_dir, resume, rounds):
    state = process.initialize(seed)
    if checkpoint_dir is None or checkpoint.latest_round(checkpoint_dir) is None:
        return state, 0
    if not resume:
        raise ValueError(
            f"checkpoint_dir {checkpoint_dir!r} holds checkpoints up to round "
            f"{checkpoint.latest_round(checkpoint_dir)}; pass resume=True to continue "
            "them, or another directory to start over."
        )
    state, start = checkpoint.restore_newest(checkpoint_dir, state)
    if start > rounds:
        raise ValueError(
            f"rounds={rounds}: the checkpoints in {checkpoint_dir!r} have done {start} "
            f"rounds; expected rounds={start} or more."
        )
    return state, start


def _print_progress(row, rounds, every) -> None:
    done = row["round"]
    if done % every and done != rounds and not any(k.startswith("eval/") for k in row):
        return
    shown = [
        f"{k} {v:.4g}"
        for k, v in row.items()
        if k in ("loss", "accuracy") or k.startswith("eval/")
        if isinstance(v, float) and not math.isnan(v)
    ]
    print(
        f"round {done}/{rounds}: {', '.join(shown)} ({row['round_seconds']:.2f} s)",
        file=sys.stderr,
        flush=True,
    )


def run_experiment(
    process,
    train_data=None,
    *,
    rounds: int,
    clients_per_round: int | None = None,
    sampler: Callable | None = None,
    eval_data=None,
    eval_every: int = 10,
    evaluator=None,
    checkpoint_dir=None,
    checkpoint_every: int = 10,
    keep_checkpoints: int | None = 3,
    resume: bool = True,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    seed: int = 0,
):
    """Runs ``rounds`` rounds of ``process``, evaluating, checkpointing and calling back.

    Args:
      process: a `FederatedProcess` (``initialize``, ``next``, ``get_model_weights``).
      train_data: the `FederatedData` cohorts are sampled from.
      rounds: the experiment's total rounds (a resumed one plays the rest).
      clients_per_round: the cohort size, sampled with seed ``[seed, round]``;
        or give ``sampler`` instead.
      sampler: ``round -> cohort`` (a `FederatedData`), for any other scheme.
      eval_data: a `FederatedData` evaluated every ``eval_every`` rounds and
        after the last (rows get ``eval/<metric>``); None evaluates nothing.
      eval_every: rounds between evaluations.
      evaluator: the evaluation process; default ``build_fed_eval(process.model)``.
      checkpoint_dir: where checkpoints and the rows (``history.jsonl``) go;
        None keeps nothing.
      checkpoint_every: rounds between checkpoints (the last round, an early
        stop and Ctrl-C are always saved).
      keep_checkpoints: the newest this many are kept; None keeps all.
      resume: continue from ``checkpoint_dir``'s newest checkpoint; with False
        a directory holding checkpoints is refused, never overwritten.
      callbacks: `Callback` objects (`JsonlLogger`, `CsvLogger`, `CurvePlot`,
        `TensorBoard`, `EarlyStopping`, or your own).
      progress: print a line to stderr every 5% of the rounds and after each
        evaluation.
      seed: the process's and the sampling's seed.

    Returns:
      ``(state, history)``: the final `ServerState` and every round's row
      (``{'round', **metrics, 'eval/...', 'round_seconds'}``), resumed rounds included.

    Raises:
      ValueError / TypeError: bad arguments, a ``rounds`` below the
        checkpoint's, or checkpoints present with ``resume=False``.
      KeyboardInterrupt: Ctrl-C, after saving the last finished round.

    Example:
      >>> state, history = run_experiment(process, train, rounds=100,
      ...     clients_per_round=10, eval_data=test, checkpoint_dir="run/ckpt",
      ...     callbacks=[TensorBoard("run/tb"), EarlyStopping("eval/loss")])
    """
    rounds = _positive_int(rounds, "rounds")
    eval_every = _positive_int(eval_every, "eval_every")
    checkpoint_every = _positive_int(checkpoint_every, "checkpoint_every")
    sample = _sampler(train_data, clients_per_round, sampler, seed)
    callbacks = _check_callbacks(callbacks)
    checkpoint_dir = None if checkpoint_dir is None else os.fspath(checkpoint_dir)
    if eval_data is not None and evaluator is None:
        from fedjax_keras.algorithms import build_fed_eval

        evaluator = build_fed_eval(process.model)

    state, start = _start(process, seed, checkpoint_dir, resume, rounds)
    history = _History(checkpoint_dir)
    history.load(start)
    for callback in callbacks:
        callback.on_begin(start, list(history.rows))
    saved = start
    progress_every = max(1, rounds // 20)
    try:
        for round_num in range(start, rounds):
            tic = time.perf_counter()
            out = process.next(state, sample(round_num))
            state, done = out.state, round_num + 1
            row = {"round": done, **{k: _plain(v) for k, v in out.metrics.items()}}
            if eval_data is not None and (done % eval_every == 0 or done == rounds):
                row.update(_evaluate(process, evaluator, eval_data, state))
            row["round_seconds"] = time.perf_counter() - tic
            history.append(row)
            # Every callback sees the row, even after one asks to stop.
            stop = [bool(callback.on_round_end(row, state)) for callback in callbacks]
            if checkpoint_dir is not None and (
                done % checkpoint_every == 0 or done == rounds or any(stop)
            ):
                checkpoint.save_state(checkpoint_dir, state, done, max_to_keep=keep_checkpoints)
                saved = done
            if progress:
                _print_progress(row, rounds, progress_every)
            if any(stop):
                break
    except KeyboardInterrupt:
        done = len(history.rows) and history.rows[-1]["round"]
        if checkpoint_dir is not None and done > saved:
            checkpoint.save_state(checkpoint_dir, state, done, max_to_keep=keep_checkpoints)
        raise
    finally:
        for callback in callbacks:
            if callable(getattr(callback, "on_end", None)):
                callback.on_end(state, list(history.rows))
    return state, list(history.rows)
