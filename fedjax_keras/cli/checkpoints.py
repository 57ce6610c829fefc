"""Checkpoints and interrupts of a CLI run: restore the newest good one, save, stop.

Shared by the single-run loop (cli/main.py) and the sweep loop (cli/sweep.py).
"""

import os
import signal
import sys

from fedjax_keras.cli import distributed
from fedjax_keras.cli._errors import UsageError
from fedjax_keras.cli.interrupt import resume_command

# Test hook: once this round is logged (and checkpointed, when due) the process
# kills itself with SIGKILL, as a preempted job would be; tests/checkpoint/test_checkpoint.py
# uses it to check that --resume repeats the uninterrupted run bit for bit.
KILL_AFTER_ROUND_ENV = "FEDJAX_KERAS_KILL_AFTER_ROUND"
# Test hook: with it set, only the process of this index (jax.process_index())
# kills itself after KILL_AFTER_ROUND_ENV's round; `fedjax-keras launch` gives
# every process the same environment, and tests/cli/test_launch_faults.py kills
# one of them to check that the launcher stops the others.
KILL_PROCESS_ENV = "FEDJAX_KERAS_KILL_PROCESS"


def restore(run, template, rounds: int):
    """The newest checkpoint of ``run`` that restores, and its round; (template, 0) if none.

    Corrupt newer checkpoints are skipped (each with a one-line warning) and
    moved to ``<run>/corrupt_checkpoints/``, so the resumed run can write those
    rounds again.

    Raises:
      UsageError: the checkpoint is of a round after ``rounds`` (``--rounds``
        smaller than the rounds the run has done), or does not restore.
    """
    state, start = _restore(run, template)
    if start > rounds:
        raise UsageError(
            f"--rounds {rounds}: the run in {run.path} has already done {start} rounds; "
            f"expected --rounds {start} or more (nothing was changed)."
        )
    return state, start


def _restore(run, template):
    from fedjax_keras import checkpoint

    if not distributed.is_primary():
        # Process 0 reads the checkpoint; everyone receives its state and round.
        state, start = distributed.broadcast_from_primary((template, 0))
        return state, int(start)
    if checkpoint.latest_round(run.checkpoints) is None:
        state, start = distributed.broadcast_from_primary((template, 0))
        return state, int(start)
    try:
        state, start = checkpoint.restore_newest(run.checkpoints, template)
    except checkpoint.CheckpointMismatchError as error:
        raise UsageError(f"--resume: {error}") from None
    except checkpoint.CorruptCheckpointError as error:
        raise UsageError(
            f"--resume: {error} Move {run.checkpoints} away to start the run over."
        ) from None
    moved = run.set_aside_checkpoints_after(start)
    if moved:
        print(
            f"fedjax-keras: note: moved the skipped checkpoints to {moved}.",
            file=sys.stderr,
        )
    state, start = distributed.broadcast_from_primary((state, start))
    return state, int(start)


def save(run, state, done: int, keep: int) -> None:
    from fedjax_keras import checkpoint
    from fedjax_keras.cli.run_dir import format_bytes

    if not distributed.is_primary():
        return  # process 0 writes the (replicated) state for everyone
    try:
        checkpoint.save_state(run.checkpoints, state, done, max_to_keep=keep)
    except checkpoint.CheckpointDiskFullError as error:
        kept = checkpoint.latest_round(run.checkpoints)
        intact = f"the checkpoint of round {kept} is intact" if kept else "no checkpoint is kept"
        raise UsageError(
            f"--run-dir: no space left for the checkpoint of round {done} in {error.directory}: "
            f"it needs about {format_bytes(error.needed_bytes)} free, "
            f"{format_bytes(error.free_bytes)} are free; {intact}. Free some space, then "
            f"continue with: {resume_command(run.path)}"
        ) from None


def interrupted(run, when: str) -> int:
    print(
        f"fedjax-keras: interrupted{' ' + when if when else ''}; continue with: "
        f"{resume_command(run.path)}",
        file=sys.stderr,
        flush=True,
    )
    return 130


def after_round(
    run, state, done: int, config, *, stopping: bool, kill_after, progress
) -> int | None:
    """The end of round ``done`` of a run's loop (a single run's or a sweep's).

    Checkpoints the round when it is due, the last, or when stopping (so that
    --resume loses nothing after Ctrl-C); kills the process after round
    ``kill_after`` (`KILL_AFTER_ROUND_ENV`, the fault tests' crash).

    Returns:
      The exit status (130) when stopping, else None (the loop goes on).
    """
    if done % config.checkpoint_every == 0 or done == config.rounds or stopping:
        save(run, state, done, config.keep_checkpoints)
    if kill_after is not None and done == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)
    if stopping:
        progress.stop()
        return interrupted(run, f"after round {done} (checkpoint saved)")
    return None


def _kill_after_round() -> str | None:
    """`KILL_AFTER_ROUND_ENV`'s round in the process `KILL_PROCESS_ENV` names (all if unset)."""
    only = os.environ.get(KILL_PROCESS_ENV)
    if only is not None:
        import jax

        if int(only) != jax.process_index():
            return None
    return os.environ.get(KILL_AFTER_ROUND_ENV)


def play_rounds(run, config, state, first: int, play_round, *, stopping, progress) -> int | None:
    """A run's round loop (a single run's or a sweep's), with checkpoints and interrupts.

    Args:
      run: the `RunDir`.
      config: the run's `Config` (rounds, checkpoint cadence).
      state: the state before round ``first``.
      first: the first round to play (the checkpoint's, on --resume).
      play_round: ``(round_num, state) -> state``: trains, evaluates and records one round.
      stopping: ``() -> bool`` (Ctrl-C), read once per round after it is recorded:
        twice, a Ctrl-C between the reads would skip the checkpoint.
      progress: the `RoundProgress`, stopped on every way out.

    Returns:
      The exit status when the loop was interrupted (130), else None.
    """
    kill_after = _kill_after_round()
    try:
        for round_num in range(first, config.rounds):
            state = play_round(round_num, state)
            status = after_round(
                run,
                state,
                round_num + 1,
                config,
                stopping=stopping(),
                kill_after=kill_after,
                progress=progress,
            )
            if status is not None:
                return status
    except KeyboardInterrupt:  # only outside the main thread, where no handler is installed
        progress.stop()
        return interrupted(run, "")
    finally:
        progress.stop()
    return None
